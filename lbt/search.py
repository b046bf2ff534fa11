"""The steps-to-target protocol's decisions, kept free of training code.

Shallue et al. (2019) measure, for each batch size B, the fewest updates S(B)
that reach a held-out target, searching the learning rate until the best one
is bracketed; McCandlish et al. (2018) read the curve as
S(B) = S_min·(1 + B_noise/B), E(B) = B·S(B) = E_min·(1 + B/B_noise), with
the critical batch B_crit = E_min/S_min = B_noise. This module holds the pure
choices of that protocol: when a run reached the target, which learning rates
to try next, which batch to measure next, and the fit of B_crit with an
interval, so that each can be tested on numbers known by hand.

References:
  Shallue et al. 2019, "Measuring the Effects of Data Parallelism on Neural
    Network Training", https://arxiv.org/abs/1811.03600
  McCandlish et al. 2018, "An Empirical Model of Large-Batch Training",
    https://arxiv.org/abs/1812.06162
"""

import dataclasses
import math
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np

REACHED = "reached"
NOT_REACHED = "not_reached"
DIVERGED = "diverged"
STATUSES = (REACHED, NOT_REACHED, DIVERGED)

# Learning rates closer than this (relative) are the same grid point.
LR_RTOL = 1e-6
# McCandlish et al.'s regimes: B << B_crit scales almost perfectly (S ≈ E_min/B,
# within ~10 %) below B_crit/REGIME_FACTOR; B >> B_crit is maximal data
# parallelism (S ≈ S_min) above B_crit·REGIME_FACTOR; the transition between.
REGIME_FACTOR = 10.0
# A fitted S_min or E_min/B this small relative to the smallest S is zero.
_NEGLIGIBLE = 1e-12


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
  with np.errstate(invalid="ignore"):
    hit = np.isfinite(metric) & (metric >= target if mode == "max" else metric <= target)
  return int(steps[hit].min()) if hit.any() else None


@dataclasses.dataclass(frozen=True)
class Trial:
  """One learning rate run at one batch size: reached the target (in how many
  updates and examples), ran out of budget, or diverged."""
  learning_rate: float
  status: str
  updates_to_target: Optional[int] = None
  examples_to_target: Optional[int] = None

  def __post_init__(self):
    if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
      raise ValueError(f"learning_rate must be positive and finite, got {self.learning_rate}")
    if self.status not in STATUSES:
      raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
    if (self.status == REACHED) != (self.updates_to_target is not None):
      raise ValueError(f"updates_to_target is set exactly when status is {REACHED!r}; "
                       f"got status {self.status!r}, updates {self.updates_to_target}")


def best_trial(trials: Sequence[Trial]) -> Optional[Trial]:
  """The reached trial with the fewest updates to target; None if none reached.

  Ties (updates are counted at the evaluation interval, so neighbours often
  tie) go to the middle learning rate of the tied ones (the lower middle of
  an even count): a plateau of equally fast rates brackets its best, and the
  grid does not walk off along it.
  """
  reached = [t for t in trials if t.status == REACHED]
  if not reached:
    return None
  fewest = min(t.updates_to_target for t in reached)
  tied = sorted((t for t in reached if t.updates_to_target == fewest),
                key=lambda t: t.learning_rate)
  return tied[(len(tied) - 1) // 2]


def _grid_neighbour(lr: float, guess: float, direction: int) -> float:
  """The grid point guess·2^k nearest lr strictly below (-1) or above (+1)."""
  k = math.log2(lr / guess)
  step = math.ceil(k - LR_RTOL) - 1 if direction < 0 else math.floor(k + LR_RTOL) + 1
  return guess * 2.0 ** step


def _close(a: float, b: float) -> bool:
  return abs(a - b) <= LR_RTOL * max(abs(a), abs(b))


def next_learning_rates(trials: Sequence[Trial], guess: float, *,
                        max_trials: int = 10) -> List[float]:
  """The learning rates to run next at one batch size; [] when done.

  The grid stays on the points guess·2^k (guess: the scaling rule's learning
  rate), so batches share comparable grids. It starts at guess/2, guess,
  2·guess and grows one edge at a time until the best trial has a trial on each
  side: a best at the lowest LR extends down, at the highest extends up.
  Nothing reached: extend up while the highest LR did not diverge, else down
  (lower LRs are more stable but slower, and may still not reach: that is a
  result). Never proposes an LR at or above one that diverged, nor one already
  tried, nor more than max_trials trials in all.
  """
  if not (math.isfinite(guess) and guess > 0):
    raise ValueError(f"guess must be positive and finite, got {guess}")
  if max_trials < 3:
    raise ValueError(f"max_trials must be >= 3 (a bracket needs three), got {max_trials}")
  if not trials:
    return [guess / 2, guess, 2 * guess]
  if len(trials) >= max_trials:
    return []
  ordered = sorted(trials, key=lambda t: t.learning_rate)
  lowest, highest = ordered[0].learning_rate, ordered[-1].learning_rate
  down, up = _grid_neighbour(lowest, guess, -1), _grid_neighbour(highest, guess, +1)
  diverged = [t.learning_rate for t in trials if t.status == DIVERGED]
  up_allowed = not diverged or up < min(diverged) * (1 - LR_RTOL)
  best = best_trial(trials)
  if best is None:
    proposal = up if ordered[-1].status != DIVERGED and up_allowed else down
  elif _close(best.learning_rate, lowest):
    proposal = down
  elif _close(best.learning_rate, highest):
    if not up_allowed:
      return []
    proposal = up
  else:
    return []  # bracketed: a trial on each side of the best
  if any(_close(proposal, t.learning_rate) for t in trials):
    return []
  return [proposal]


def _doubling(start: int, max_batch: int) -> List[int]:
  """start, 2·start, 4·start, ... and finally max_batch itself."""
  batches = [start]
  while batches[-1] < max_batch:
    batches.append(min(2 * batches[-1], max_batch))
  return batches


def _measured_chain(best_updates: Mapping[int, Optional[float]], start: int,
                    max_batch: int) -> Tuple[List[int], Optional[int]]:
  """The measured prefix of the doubling sequence, and the first batch of the
  sequence not yet measured (None if all are)."""
  chain = []
  for batch in _doubling(start, max_batch):
    if batch not in best_updates:
      return chain, batch
    chain.append(batch)
  return chain, None


def _small_gain(s: Mapping[int, Optional[float]], a: int, b: int, min_gain: float) -> bool:
  return s[b] > (1 - min_gain) * s[a]


def _check_batches(start: int, max_batch: int, min_gain: float) -> None:
  if int(start) != start or start < 1:
    raise ValueError(f"start must be a positive integer, got {start}")
  if max_batch < start:
    raise ValueError(f"max_batch {max_batch} is below start {start}")
  if not 0 < min_gain < 1:
    raise ValueError(f"min_gain must be in (0, 1), got {min_gain}")


def next_batch(best_updates: Mapping[int, Optional[float]], *, start: int, max_batch: int,
               min_gain: float = 0.10) -> Optional[int]:
  """The next batch to measure, or None when the sweep has found the regimes.

  Batches double from start (capped at max_batch, which is measured last), so
  a few runs span perfect scaling through maximal data parallelism. Done when
  max_batch is measured; when two successive doublings each cut S(B) by less
  than min_gain (S(2B) > (1 - min_gain)·S(B) twice: the curve has flattened);
  or when a batch reached nothing within budget (None), at the start batch
  too (nothing to find there; the caller reports it). Batches off the doubling
  sequence are ignored.

  Args:
    best_updates: batch -> S(B), the best updates to target there, or None.
    start, max_batch: the first and the largest batch.
    min_gain: the relative cut in S that a doubling must buy.
  """
  _check_batches(start, max_batch, min_gain)
  chain, pending = _measured_chain(best_updates, start, max_batch)
  for i, batch in enumerate(chain):
    if best_updates[batch] is None:
      return None
    if i >= 2 and (_small_gain(best_updates, chain[i - 2], chain[i - 1], min_gain)
                   and _small_gain(best_updates, chain[i - 1], batch, min_gain)):
      return None
  return pending


def doubling_stops_at(best_updates: Mapping[int, Optional[float]],
                      min_gain: float = 0.10) -> Optional[int]:
  """The first batch B from which two successive doublings (B to 2B, 2B to 4B)
  each cut S by less than min_gain: where doubling stops paying, by the rule
  that stops next_batch (two, so one noisy pair does not decide it).

  The sequence is the doubling one from the smallest measured batch (the
  largest may be its cap); it ends at a batch that reached nothing. None if
  doubling never stopped paying within the measured range.
  """
  if not best_updates:
    return None
  _check_batches(min(best_updates), max(best_updates), min_gain)
  chain, _ = _measured_chain(best_updates, min(best_updates), max(best_updates))
  values = [best_updates[b] for b in chain]
  reached = chain[:values.index(None)] if None in values else chain
  for a, b, c in zip(reached, reached[1:], reached[2:]):
    if _small_gain(best_updates, a, b, min_gain) and _small_gain(best_updates, b, c, min_gain):
      return a
  return None


@dataclasses.dataclass(frozen=True)
class LimitFit:
  """S(B) = S_min + E_min/B fitted to the reached batches, B_crit = E_min/S_min
  = B_noise with a `level` interval [b_crit_low, b_crit_high] (0.0 / inf where
  the data do not bound it), and whether B_crit lies within the batches that
  were measured (outside, it is an extrapolation)."""
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


def _shape(b, scale: float, batch: np.ndarray) -> np.ndarray:
  """S(B)/S_min up to a factor, 1 + b/B, finite at b = 0 and b = inf; b is a
  scalar or a column of candidates."""
  b = np.asarray(b, np.float64)[..., None] / scale
  x = scale / batch
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(b > 1, 1.0 / b + x, 1.0 + b * x)


def _profile_rss(shape: np.ndarray, s: np.ndarray) -> np.ndarray:
  """Relative residual sum of squares of S = c·shape, minimised over c."""
  z = shape / s
  c = z.sum(-1) / (z * z).sum(-1)
  return ((1.0 - c[..., None] * z) ** 2).sum(-1)


def _full_rss(batch: np.ndarray, s: np.ndarray, scale: float) -> np.ndarray:
  """The same with S_min and E_min both free (rows of s are datasets)."""
  x1, x2 = 1.0 / s, (scale / batch) / s
  a11, a12, a22 = (x1 * x1).sum(-1), (x1 * x2).sum(-1), (x2 * x2).sum(-1)
  r1, r2 = x1.sum(-1), x2.sum(-1)
  det = a11 * a22 - a12 * a12
  beta1, beta2 = (a22 * r1 - a12 * r2) / det, (a11 * r2 - a12 * r1) / det
  return ((1.0 - beta1[..., None] * x1 - beta2[..., None] * x2) ** 2).sum(-1)


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


def _threshold(batch, s, scale, b_crit, sigma, dof, level, resamples, seed) -> float:
  """The level-quantile of the profile statistic at the fitted B_crit, over
  datasets simulated from the fit with lognormal relative noise of the fit's
  residual size."""
  shape = _shape(b_crit, scale, batch)
  z = shape / s
  fitted = (z.sum() / (z * z).sum()) * shape
  rng = np.random.default_rng(seed)
  sims = fitted * np.exp(sigma * rng.standard_normal((resamples, batch.size)))
  full = _full_rss(batch, sims, scale)
  stat = (_profile_rss(shape, sims) - full) / (full / dof)
  return float(np.quantile(stat, level))


def _interval_edge(stat, grid: np.ndarray, outside: int, inside: int) -> float:
  """Where stat crosses 0 between grid[outside] (> 0) and grid[inside] (<= 0),
  by bisection in log b; the inside point itself next to b = 0 or b = inf."""
  lo, hi = grid[outside], grid[inside]
  if not (0 < lo < math.inf):
    return float(hi)
  lo, hi = math.log(lo), math.log(hi)
  for _ in range(60):
    mid = 0.5 * (lo + hi)
    if stat(math.exp(mid)) <= 0:
      hi = mid
    else:
      lo = mid
  return math.exp(hi)


def _profile_interval(batch, s, scale, b_crit, rss_full, level, resamples, seed
                      ) -> Tuple[float, float]:
  """The hull of b_crit and {b : profile statistic(b) <= calibrated threshold}."""
  dof = batch.size - 2
  sigma = math.sqrt(rss_full / dof)
  if sigma < 1e-12:  # the points lie on the curve: nothing to widen
    return b_crit, b_crit
  thr = _threshold(batch, s, scale, b_crit, sigma, dof, level, resamples, seed)

  def stat(b):  # the profile statistic minus the threshold: <= 0 inside
    return (_profile_rss(_shape(b, scale, batch), s) - rss_full) / (rss_full / dof) - thr

  # b_crit joins the grid (and the set), so an interval narrower than the
  # grid's 10 % spacing is still found, by bisection either side of it.
  grid = np.unique(np.concatenate(
      [[0.0, b_crit, math.inf], scale * np.exp(np.linspace(-30.0, 30.0, 601))]))
  inside = np.flatnonzero((stat(grid) <= 0) | (grid == b_crit))
  first, last = inside[0], inside[-1]
  low = 0.0 if first == 0 else _interval_edge(stat, grid, first - 1, first)
  high = math.inf if last == grid.size - 1 else _interval_edge(stat, grid, last + 1, last)
  return low, high


def fit_limit(batches: Sequence[float], updates: Sequence[Optional[float]], *,
              level: float = 0.9, resamples: int = 2000, seed: int = 0) -> LimitFit:
  """S(B) = S_min + E_min/B by least squares of relative residuals on the
  batches that reached the target (updates None/NaN are dropped), and a
  `level` interval for B_crit = E_min/S_min.

  The interval is a profile likelihood one: the B_crit whose best curve
  (S_min refitted) raises the residual sum of squares over the free fit by
  less than a threshold in units of the residual variance. The threshold is
  the level-quantile of that statistic over `resamples` datasets simulated
  from the fit (parametric bootstrap, lognormal relative noise of the fitted
  size; seeded, so deterministic). The statistic is scale-free, so its
  simulated quantile carries over from the fit to the truth: over 300-2000
  simulated sweeps of 4-10 batches from B_crit/8 to 8·B_crit with 5-30 %
  lognormal noise, the nominal 90 % interval covered the true B_crit 89-90 %
  of the time, where a percentile bootstrap of B_crit covered 76-84 % (it
  ignores that the noise size is itself estimated from few residuals, and
  B_crit = E_min/S_min is a skewed ratio). It bounds B_crit on one side only,
  or not at all (0.0 / inf), when the data cannot.

  Degenerate fits do not raise: S_min <= 0 (to rounding: S falls like 1/B
  throughout, perfect scaling over the measured range, no sign of a limit)
  gives b_crit = inf; E_min <= 0 (S flat: no scaling at all, or noise) gives
  b_crit = 0. With exact data the interval is the point b_crit.
  """
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1), got {level}")
  if resamples < 100:
    raise ValueError(f"resamples must be >= 100, got {resamples}")
  batch, s = _reached_points(batches, updates)
  scale = float(np.exp(np.log(batch).mean()))
  design = np.stack([1.0 / s, (scale / batch) / s], axis=1)
  (s_min, e_scaled), *_ = np.linalg.lstsq(design, np.ones_like(s), rcond=None)
  s_min, e_min = float(s_min), float(e_scaled) * scale
  measured_low, measured_high = float(batch.min()), float(batch.max())
  rss_full = float(((1.0 - design @ np.array([s_min, e_scaled])) ** 2).sum())
  # A term below rounding of the smallest S counts as zero.
  negligible = _NEGLIGIBLE * float(s.min())
  b_crit = (math.inf if s_min <= negligible else
            0.0 if e_min / measured_high <= negligible else e_min / s_min)
  low, high = _profile_interval(batch, s, scale, b_crit, rss_full, level, resamples, seed)
  return LimitFit(
      s_min=s_min, b_noise=b_crit, e_min=e_min, b_crit=b_crit, b_crit_low=low,
      b_crit_high=high, level=level, measured_low=measured_low, measured_high=measured_high,
      method=(f"profile likelihood of relative residuals, threshold by parametric "
              f"bootstrap, {resamples} resamples"),
      inside=bool(measured_low <= b_crit <= measured_high))


def regimes(b_crit: float) -> Tuple[float, float]:
  """The batch bounds of McCandlish et al.'s regimes around B_crit: near-
  perfect scaling below b_crit/REGIME_FACTOR, maximal data parallelism above
  b_crit·REGIME_FACTOR, the transition between."""
  if math.isnan(b_crit) or b_crit < 0:
    raise ValueError(f"b_crit must be >= 0, got {b_crit}")
  return b_crit / REGIME_FACTOR, b_crit * REGIME_FACTOR
