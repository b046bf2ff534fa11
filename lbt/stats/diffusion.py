"""Hoffer et al.'s ultra-slow diffusion, fitted: ‖w_t − w_0‖ against the update
count t as a logarithm a·log t + b and as a power law c·t^p, and the verdict
on their theory written from measured numbers. Numpy only.

References:
  Hoffer, Hubara & Soudry 2017, "Train longer, generalize better: closing the
    generalization gap in large batch training", https://arxiv.org/abs/1705.08741
  You et al. 2020, "The Limit of the Batch Size", https://arxiv.org/abs/2006.08517
"""

import dataclasses
from typing import Sequence, Tuple

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
