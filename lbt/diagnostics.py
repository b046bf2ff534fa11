"""Pure estimators and fits that a batch-size study is analysed with.

Numpy only, with no import of the trainer or of jax, so that a notebook (or
`lbt.report`) can analyse a finished study without building a model:

- the ultra-slow-diffusion fits of ‖w_t − w_0‖ against the update count t, a
  logarithm a·log t + b against a power law c·t^p, and the verdict on Hoffer
  et al.'s theory written from measured numbers;
- McCandlish et al.'s unbiased estimates of |G|² and tr(Σ) from the squared
  gradient norms of a small and a big batch (the gradient noise scale);
- Shallue / McCandlish's steps-to-target curve S(B) = S_min·(1 + B_noise/B),
  fitted by least squares, and the critical batch E_min/S_min.

References:
  Hoffer, Hubara & Soudry 2017, "Train longer, generalize better: closing the
    generalization gap in large batch training", https://arxiv.org/abs/1705.08741
  You et al. 2020, "The Limit of the Batch Size", https://arxiv.org/abs/2006.08517
  McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model of Large-Batch
    Training", App. A, https://arxiv.org/abs/1812.06162
  Shallue et al. 2019, "Measuring the Effects of Data Parallelism on Neural
    Network Training", https://arxiv.org/abs/1811.03600
"""

import dataclasses
from typing import Optional, Sequence, Tuple

import numpy as np

# A fit explains the curve when R² is at least this (and beats the other form).
MIN_R2 = 0.95
# Hoffer's claim holds when the adapted large batch comes this close (in
# accuracy, as a fraction) to the small batch.
GAP_TOLERANCE = 0.005
# "Matching the small batch's distance" means within this relative difference.
DISTANCE_TOLERANCE = 0.2


@dataclasses.dataclass(frozen=True)
class LogFit:
  """d(t) ≈ a·log t + b, with R² of d (not of log d)."""
  a: float
  b: float
  r2: float


@dataclasses.dataclass(frozen=True)
class PowerFit:
  """d(t) ≈ c·t^p, fitted in log–log space, with R² of d itself."""
  c: float
  p: float
  r2: float


def r_squared(y, y_hat) -> float:
  """1 − SS_res/SS_tot; 1.0 for a constant y fitted exactly."""
  y, y_hat = np.asarray(y, np.float64), np.asarray(y_hat, np.float64)
  ss_res = float(np.sum((y - y_hat) ** 2))
  ss_tot = float(np.sum((y - y.mean()) ** 2))
  if ss_tot == 0.0:
    return 1.0 if ss_res == 0.0 else 0.0
  return 1.0 - ss_res / ss_tot


def _curve(t, d) -> Tuple[np.ndarray, np.ndarray]:
  t, d = np.asarray(t, np.float64), np.asarray(d, np.float64)
  if t.shape != d.shape or t.ndim != 1 or t.size < 2:
    raise ValueError(f"need two 1-D arrays of the same length >= 2, got {t.shape}, {d.shape}")
  if np.any(t <= 0):
    raise ValueError("update counts t must be positive (t starts at 1)")
  return t, d


def fit_log(t, d) -> LogFit:
  """Least squares of d = a·log t + b: Hoffer et al.'s ultra-slow diffusion."""
  t, d = _curve(t, d)
  design = np.stack([np.log(t), np.ones_like(t)], axis=1)
  (a, b), *_ = np.linalg.lstsq(design, d, rcond=None)
  return LogFit(float(a), float(b), r_squared(d, a * np.log(t) + b))


def fit_power(t, d) -> PowerFit:
  """Least squares of log d = log c + p·log t; R² is then measured on d.

  Measuring both fits' R² on d itself makes them comparable.
  """
  t, d = _curve(t, d)
  if np.any(d <= 0):
    raise ValueError("a power law needs positive distances")
  design = np.stack([np.log(t), np.ones_like(t)], axis=1)
  (p, log_c), *_ = np.linalg.lstsq(design, np.log(d), rcond=None)
  c = float(np.exp(log_c))
  return PowerFit(c, float(p), r_squared(d, c * t ** p))


def is_logarithmic(log_fit: LogFit, power_fit: PowerFit, min_r2: float = MIN_R2) -> bool:
  """Does the distance grow like log t: the log fit explains the curve
  (R² >= min_r2) at least as well as a power law with the same two parameters."""
  return log_fit.a > 0 and log_fit.r2 >= min_r2 and log_fit.r2 >= power_fit.r2


def gap_closed_fraction(small: float, large: float, adapted: float) -> float:
  """How much of the small-vs-large accuracy gap the adaptation recovered
  (1 = all of it, 0 = none, < 0 = worse); nan when there was no gap."""
  gap = small - large
  return float("nan") if gap <= 0 else (adapted - large) / gap


@dataclasses.dataclass(frozen=True)
class Verdict:
  """Hoffer et al.'s two claims, each answered from the measured numbers."""
  logarithmic: bool          # ‖w_t − w_0‖ ~ log t at every batch with a fit.
  distance_matched: bool     # The adapted large batch reached the small one's distance.
  gap_closed: bool           # ... and its test accuracy.
  supports_hoffer: bool
  text: str


def diffusion_verdict(fits: Sequence[Tuple[int, LogFit, PowerFit]], *,
                      small_batch: int, small_accuracy: float, small_distance: float,
                      large_batch: int, large_accuracy: float,
                      adapted_accuracy: float, adapted_distance: float,
                      min_r2: float = MIN_R2, gap_tolerance: float = GAP_TOLERANCE,
                      distance_tolerance: float = DISTANCE_TOLERANCE) -> Verdict:
  """The ultra-slow-diffusion verdict, written from the measured numbers.

  Hoffer et al. claim (1) that ‖w_t − w_0‖ grows like log t, so that the
  large batch's few updates leave it too close to w_0, and (2) that giving it
  the small batch's number of updates (regime adaptation) closes the
  generalization gap. You et al. 2020 report that (2) fails at huge batches.

  Args:
    fits: (batch, log fit, power fit) per batch size.
    small_batch, small_accuracy, small_distance: the small-batch baseline
      (final test accuracy and final ‖w − w_0‖).
    large_batch, large_accuracy: the large batch at equal epochs.
    adapted_accuracy, adapted_distance: the large batch after regime adaptation.

  Returns:
    A Verdict whose text states the numbers and the answer to each claim.
  """
  log_batches = [b for b, lf, pf in fits if is_logarithmic(lf, pf, min_r2)]
  logarithmic = bool(fits) and len(log_batches) == len(fits)
  distance_matched = (abs(adapted_distance - small_distance)
                      <= distance_tolerance * abs(small_distance))
  gap_closed = adapted_accuracy >= small_accuracy - gap_tolerance
  supports = logarithmic and gap_closed
  fraction = gap_closed_fraction(small_accuracy, large_accuracy, adapted_accuracy)
  growth = (f"‖w_t − w_0‖ grows logarithmically (a·log t + b, R² >= {min_r2:g} and "
            f"at least the power law's) at {len(log_batches)} of {len(fits)} batch sizes"
            + (f" ({', '.join(str(b) for b in log_batches)})" if log_batches else ""))
  gap = (f"regime adaptation at B={large_batch} reached {adapted_accuracy:.2%} test "
         f"accuracy against {small_accuracy:.2%} at B={small_batch} and {large_accuracy:.2%} "
         f"at equal epochs" + (f" ({fraction:.0%} of the gap closed)"
                               if np.isfinite(fraction) else " (no gap at equal epochs)"))
  distance = (f"its distance from w_0 was {adapted_distance:.4g} against "
              f"{small_distance:.4g} for the small batch ("
              f"{'matched' if distance_matched else 'not matched'} within "
              f"{distance_tolerance:.0%})")
  if supports:
    answer = "consistent with Hoffer et al.: the gap is a matter of the number of updates."
  elif gap_closed:
    answer = ("the gap closes with the number of updates, but the distance does not grow "
              "logarithmically at every batch, so only Hoffer et al.'s remedy holds here.")
  elif distance_matched:
    answer = ("this contradicts Hoffer et al., as You et al. 2020 report: the large batch "
              "travelled as far as the small one and still generalizes worse.")
  else:
    answer = ("this contradicts Hoffer et al.'s conclusion: matching the number of updates "
              "does not close the gap.")
  text = f"{growth}; {gap}; {distance}. Verdict: {answer}"
  return Verdict(logarithmic, bool(distance_matched), bool(gap_closed), bool(supports), text)


def gradient_noise_scale(small_sq_norm, big_sq_norm, small_batch, big_batch):
  """Unbiased |G|² and tr(Σ) from the squared gradient norms of two batch sizes.

  With E|G_b|² = |G|² + tr(Σ)/b for the mean gradient G_b of b examples:
    |G|²  ≈ (B·|G_B|² − b·|G_b|²) / (B − b)
    tr(Σ) ≈ (|G_b|² − |G_B|²) / (1/b − 1/B)
  and the simple noise scale is B_simple = tr(Σ)/|G|² (average numerator and
  denominator separately over many updates before dividing).

  Args:
    small_sq_norm: |G_b|², floats or arrays (e.g. the mean over microbatches).
    big_sq_norm: |G_B|² of the whole batch, same shape.
    small_batch: b; big_batch: B > b.

  Returns:
    (grad_sq_norm, trace_sigma), floats or arrays like the inputs.
  """
  b, big = float(small_batch), float(big_batch)
  if not 0 < b < big:
    raise ValueError(f"need 0 < small_batch < big_batch, got {small_batch}, {big_batch}")
  small = np.asarray(small_sq_norm, np.float64)
  large = np.asarray(big_sq_norm, np.float64)
  grad_sq_norm = (big * large - b * small) / (big - b)
  trace_sigma = (small - large) / (1.0 / b - 1.0 / big)
  if grad_sq_norm.ndim == 0:
    return float(grad_sq_norm), float(trace_sigma)
  return grad_sq_norm, trace_sigma


# Per-update decay of the moving averages of |G|^2 and tr(Σ): a time constant
# of 20 updates, long enough to average the noisy per-update estimates, short
# against the thousands of updates whose change of B_simple the curve shows.
NOISE_SCALE_DECAY = 0.95


def smoothed_noise_scale(grad_sq_norm, trace_sigma, state=(0.0, 0.0, 0),
                         decay: float = NOISE_SCALE_DECAY):
  """B_simple = EMA[tr(Σ)] / EMA[|G|²] after each of a run of updates.

  Numerator and denominator are averaged separately before dividing, as
  McCandlish et al. (2018, §2.2 and App. A) do: each per-update estimate is
  unbiased but noisy, and |G|² can even come out negative. The averages start
  at zero and are not bias-corrected: the correction (dividing both by
  1 - decay^t) cancels in their ratio.

  Args:
    grad_sq_norm, trace_sigma: per-update estimates (1-d, in update order).
    state: (EMA of |G|², EMA of tr(Σ), updates seen) from the previous call.
    decay: of both moving averages.

  Returns:
    (b_simple per update as an array, the new state).
  """
  ema_g, ema_t, count = state
  out = []
  for g, t in zip(np.asarray(grad_sq_norm, np.float64), np.asarray(trace_sigma, np.float64)):
    ema_g = decay * ema_g + (1 - decay) * g
    ema_t = decay * ema_t + (1 - decay) * t
    count += 1
    out.append(ema_t / ema_g if ema_g else float("nan"))
  return np.asarray(out), (ema_g, ema_t, count)


def fit_steps_to_target(batch_sizes, steps) -> Tuple[float, float]:
  """Least squares of S(B) = S_min·(1 + B_noise/B) = S_min + E_min/B.

  Linear in (S_min, E_min); each residual is taken relative to its S so that
  batches whose step counts differ by orders of magnitude weigh alike.

  Args:
    batch_sizes: the batches that reached the target (>= 2 distinct).
    steps: the updates each needed.

  Returns:
    (s_min, b_noise); E_min = s_min·b_noise and the critical batch is
    E_min/S_min = b_noise.
  """
  batch = np.asarray(batch_sizes, np.float64)
  s = np.asarray(steps, np.float64)
  if batch.shape != s.shape or batch.ndim != 1 or np.unique(batch).size < 2:
    raise ValueError("need steps at two or more distinct batch sizes")
  if np.any(batch <= 0) or np.any(s <= 0):
    raise ValueError("batch sizes and steps must be positive")
  design = np.stack([np.ones_like(batch), 1.0 / batch], axis=1) / s[:, None]
  (s_min, e_min), *_ = np.linalg.lstsq(design, np.ones_like(s), rcond=None)
  return float(s_min), float(e_min / s_min)


def critical_batch(e_min: float, s_min: float) -> float:
  """B_crit = E_min/S_min: the batch that costs twice the minimal steps and
  twice the minimal examples (McCandlish et al. 2018, Shallue et al. 2019)."""
  return float(e_min) / float(s_min)


def updates_to_target(steps, accuracies, target: float) -> Optional[int]:
  """The first evaluated update whose accuracy reached the target, else None."""
  for step, accuracy in sorted(zip(steps, accuracies)):
    if accuracy >= target:
      return int(step)
  return None
