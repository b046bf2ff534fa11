"""The gradient noise scale: McCandlish et al.'s unbiased estimates of |G|² and
tr(Σ) from the squared gradient norms of a small and a big batch, their
smoothed ratio B_simple (compared with a measured B_crit by its interval:
`lbt.stats.steps_to_target.inside_interval`). Numpy only.

Reference:
  McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model of Large-Batch
    Training", App. A, https://arxiv.org/abs/1812.06162
"""

import numpy as np


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
