"""Steps to a target, the one answer lbt has to each of its questions: when a
run reached the target (`reaches`, `first_at_target`, used online by the
training loop and offline by the results), and S(B) = S_min·(1 + B_noise/B)
fitted with an interval for B_crit = E_min/S_min (`fit_limit`, used by every
report). Numpy only.

McCandlish et al. (2018) read the curve as S(B) = S_min·(1 + B_noise/B),
E(B) = B·S(B) = E_min·(1 + B/B_noise), with the critical batch
B_crit = E_min/S_min = B_noise.

References:
  Shallue et al. 2019, "Measuring the Effects of Data Parallelism on Neural
    Network Training", https://arxiv.org/abs/1811.03600
  McCandlish et al. 2018, "An Empirical Model of Large-Batch Training",
    https://arxiv.org/abs/1812.06162
"""

import dataclasses
import math
from typing import Optional, Sequence, Tuple

import numpy as np

from lbt.stats import limit_interval

# McCandlish et al.'s regimes: B << B_crit scales almost perfectly (S ≈ E_min/B,
# within ~10 %) below B_crit/REGIME_FACTOR; B >> B_crit is maximal data
# parallelism (S ≈ S_min) above B_crit·REGIME_FACTOR; the transition between.
REGIME_FACTOR = 10.0


# A fitted S_min or E_min/B this small relative to the smallest S is zero.
_NEGLIGIBLE = 1e-12


# Updates to target are whole numbers: each S is known to half an update at
# best, the least noise an interval may assume.
_ROUNDING = 0.5


def reaches(value: float, target: float, mode: str = "max") -> bool:
  """Whether one held-out value is at the target: >= for "max" metrics
  (accuracy), <= for "min" ones (loss); a non-finite value never is."""
  if mode not in ("max", "min"):
    raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
  return bool(math.isfinite(value) and (value >= target if mode == "max" else value <= target))


def first_at_target(updates: Sequence[int], values: Sequence[float], target: float,
                    mode: str = "max") -> Optional[int]:
  """The first evaluated update whose held-out metric reached the target.

  S(B) counts updates to the first evaluation at target, so evaluations are
  taken in update order whatever order they were logged in.

  Args:
    updates: the update of each evaluation (any order).
    values: the metric at each; NaN/inf (a diverged eval) never counts.
    target: the threshold.
    mode: "max" (value >= target, e.g. accuracy) or "min" (value <= target,
      e.g. loss).

  Returns:
    That update, or None if no evaluation reached the target.
  """
  if mode not in ("max", "min"):
    raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
  if not math.isfinite(target):
    raise ValueError(f"target must be finite, got {target}")
  steps = np.asarray(updates, np.int64)
  metric = np.asarray(values, np.float64)
  if steps.ndim != 1 or steps.shape != metric.shape:
    raise ValueError(f"updates and values differ in shape: {steps.shape} vs {metric.shape}")
  hit = np.array([reaches(float(v), target, mode) for v in metric], bool)
  return int(steps[hit].min()) if hit.any() else None


# What the interval for B_crit bounds (LimitFit.bounded).
TWO_SIDED, LOWER_ONLY, UPPER_ONLY, UNBOUNDED = "two-sided", "lower only", "upper only", "none"


@dataclasses.dataclass(frozen=True)
class LimitFit:
  """S(B) = S_min + E_min/B fitted to the reached batches, B_crit = E_min/S_min
  = B_noise with a `level` interval [b_crit_low, b_crit_high], what that
  interval bounds (`bounded`: TWO_SIDED, LOWER_ONLY, UPPER_ONLY or UNBOUNDED,
  with 0.0 / inf on an unbounded side) and why in one sentence (`note`), and
  whether B_crit lies within the batches that were measured (outside, it is
  an extrapolation). s_min and e_min are the free fit's, negative where the
  data ask for it; b_crit is the best curve's with both >= 0."""
  s_min: float
  b_noise: float
  e_min: float
  b_crit: float
  b_crit_low: float
  b_crit_high: float
  level: float
  method: str
  measured_low: float
  measured_high: float
  inside: bool
  bounded: str
  note: str


def _reached_points(batches, updates) -> Tuple[np.ndarray, np.ndarray]:
  """The (batch, S) pairs that reached the target, checked."""
  if len(batches) != len(updates):
    raise ValueError(f"{len(batches)} batches but {len(updates)} updates")
  pairs = [(float(b), float(s)) for b, s in zip(batches, updates)
           if s is not None and math.isfinite(float(s))]
  batch = np.array([b for b, _ in pairs], np.float64)
  s = np.array([s for _, s in pairs], np.float64)
  if np.any(~np.isfinite(batch)) or np.any(batch <= 0) or np.any(s <= 0):
    raise ValueError("batches and updates to target must be positive and finite")
  distinct = np.unique(batch).size
  if distinct < 3:
    raise ValueError(f"fitting S(B) with an interval needs >= 3 distinct batches that "
                     f"reached the target, got {distinct}")
  return batch, s


def _best_b_crit(batch, s, scale, s_min, e_min) -> float:
  """B_crit of the best curve with S_min, E_min >= 0: the free fit's where
  both of its terms count (a term below rounding of the smallest S is zero),
  else the better of b = inf (S ∝ 1/B) and b = 0 (S flat)."""
  negligible = _NEGLIGIBLE * float(s.min())
  if s_min > negligible and e_min / float(batch.max()) > negligible:
    return e_min / s_min
  at = lambda b: float(limit_interval.profile_rss(limit_interval.shape(b, scale, batch), s))
  return math.inf if at(math.inf) <= at(0.0) else 0.0


def _describe(b_crit: float, low: float, high: float, level: float, exact: bool,
              fits: bool) -> Tuple[str, str]:
  """What the interval bounds, and one sentence on why."""
  bounded = {(True, True): TWO_SIDED, (True, False): LOWER_ONLY, (False, True): UPPER_ONLY,
             (False, False): UNBOUNDED}[(low > 0, high < math.inf)]
  why = ("S(B) falls like 1/B or faster over the measured batches (free fit S_min <= 0), "
         "no sign of a limit there, so " if b_crit == math.inf else
         "S(B) does not fall as the batch grows over the measured batches (free fit "
         "E_min <= 0), no scaling there, so " if b_crit == 0 else "")
  what = {TWO_SIDED: f"the data bound B_crit on both sides, {low:.4g} to {high:.4g}",
          LOWER_ONLY: f"the data bound B_crit below only, at least {low:.4g}; every larger "
                      "value fits as well",
          UPPER_ONLY: f"the data bound B_crit above only, at most {high:.4g}; every smaller "
                      "value fits as well",
          UNBOUNDED: "the data bound B_crit on neither side: every value from 0 to infinity "
                     "fits (too few batches for their noise)"}[bounded]
  exactly = ("; the points lie on the curve to within rounding S to whole updates, so their "
             "scatter cannot size the interval, which is widened to that rounding only "
             "(seed-to-seed noise would widen it more)" if exact else "")
  misfit = ("" if fits else "; no curve with S_min, E_min >= 0 passes the test at this level, "
            "so the interval is of the curves that fit about as well as the best of them")
  note = f"{why}{what} ({level:.0%} interval){misfit}{exactly}."
  return bounded, note[0].upper() + note[1:]


def fit_limit(batches: Sequence[float], updates: Sequence[Optional[float]], *,
              level: float = 0.9) -> LimitFit:
  """S(B) = S_min + E_min/B by least squares of relative residuals on the
  batches that reached the target (updates None/NaN are dropped), and a
  `level` interval for B_crit = E_min/S_min.

  The interval is Fieller's for the ratio, as a profile likelihood
  (`lbt.stats.limit_interval`): the B_crit whose best curve (S_min refitted)
  raises the residual sum of squares over the free fit by less than the
  level-quantile of F(1, n - 2) in units of the residual variance. That
  statistic is F(1, n - 2) at the true B_crit for any B_crit and noise, so
  on a fixed set of batches the interval covers at its level (measured: a
  90 % quantile within 7 % of F's on the conservative side, 3-6 batches,
  2-20 % lognormal noise). The threshold used to be simulated from the fit
  (a parametric bootstrap, one seed for every fit): under lbt.limit's rule
  below it covered 0.87-0.90 of the sweeps starting above B_crit, and raised
  on up to 5 % of them.

  The level holds for fixed batches, not quite under lbt.limit's own batch
  rule, which stops where two doublings each gain < 10 % as measured, so
  that sweeps end early when their last batches happen to look flat.
  Measured there (benchmarks/limit_coverage.py: 1000 sweeps for each start
  at B_crit/16, /4, 1, 4 and 16 times B_crit and lognormal noise of 5, 10
  and 20 %, 3-15 batches each), the nominal 90 % interval covered the true
  B_crit in 0.899 of all 15,000 sweeps, but per setting from 0.86 to 0.94:
  0.86-0.88 at worst (starting at B_crit, or 16x below it, with 10-20 %
  noise), 0.92-0.94 where the sweep starts 16x above. Read it as a 90 %
  interval give or take 4 points; conditioning its threshold on the stop
  rule gained about one point and was not kept.

  Never raises on positive data with >= 3 distinct batches. Where the data
  bound B_crit on one side or neither, the interval is open there (0.0 /
  inf) and `bounded` and `note` say so: a free fit with S_min <= 0 (S falls
  like 1/B or faster: perfect scaling, no sign of a limit) gives b_crit = inf
  and a lower bound at most; E_min <= 0 (S flat or rising: no scaling) gives
  b_crit = 0 and an upper bound at most; when not even the best admissible
  curve passes the test, the interval is of the curves that fit about as
  well as it, and the note says so. Points exactly on a curve do not give a
  zero-width interval: the noise is floored at rounding S to whole updates
  (0.5/min S, relative), and the note says the interval is that rounding's.
  """
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1), got {level}")
  batch, s = _reached_points(batches, updates)
  scale = float(np.exp(np.log(batch).mean()))
  s_min, e_scaled, _ = (float(v) for v in limit_interval.free_fit(batch, s, scale))
  e_min = e_scaled * scale
  b_crit = _best_b_crit(batch, s, scale, s_min, e_min)
  floor = _ROUNDING / float(s.min())
  low, high, fits = limit_interval.profile_interval(batch, s, scale, b_crit, floor=floor,
                                                    level=level)
  rss = (limit_interval.free_fit(batch, s, scale)[2] if fits else
         limit_interval.best_rss(batch, s, scale))
  exact = float(rss) / (batch.size - 2) < floor * floor
  bounded, note = _describe(b_crit, low, high, level, exact, fits)
  measured_low, measured_high = float(batch.min()), float(batch.max())
  return LimitFit(
      s_min=s_min, b_noise=b_crit, e_min=e_min, b_crit=b_crit, b_crit_low=low,
      b_crit_high=high, level=level, measured_low=measured_low, measured_high=measured_high,
      method=("profile likelihood of relative residuals (Fieller's interval for "
              f"E_min/S_min), threshold the F(1, {batch.size - 2}) quantile"),
      inside=bool(measured_low * (1 - 1e-9) <= b_crit <= measured_high * (1 + 1e-9)),
      bounded=bounded, note=note)


def regimes(b_crit: float) -> Tuple[float, float]:
  """The batch bounds of McCandlish et al.'s regimes around B_crit: near-
  perfect scaling below b_crit/REGIME_FACTOR, maximal data parallelism above
  b_crit·REGIME_FACTOR, the transition between."""
  if math.isnan(b_crit) or b_crit < 0:
    raise ValueError(f"b_crit must be >= 0, got {b_crit}")
  return b_crit / REGIME_FACTOR, b_crit * REGIME_FACTOR


def inside_interval(value: float, low: Optional[float], high: Optional[float],
                    bounded: str) -> Optional[bool]:
  """Whether a value (B_simple) lies inside B_crit's interval, an open side
  counting as no bound; None when the interval bounds neither side."""
  if bounded == UNBOUNDED or (low is None and high is None):
    return None
  above_low = low is None or bounded == UPPER_ONLY or value >= low
  below_high = high is None or bounded == LOWER_ONLY or value <= high
  return above_low and below_high
