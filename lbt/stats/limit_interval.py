"""The interval for B_crit of the fit S(B) = S_min + E_min/B (used by
`lbt.stats.steps_to_target.fit_limit`), kept apart from the fit's bookkeeping.

Curves are S = c·shape_b(B) with B_crit = b: shape_b = 1 + b/B is finite at
b = 0 (S flat: no scaling) and, rescaled, at b = inf (S ∝ 1/B: perfect
scaling), so the one parameter b spans every curve with S_min, E_min >= 0.
All sums of squares are of relative residuals, 1 - fitted/S. Numpy only.

Reference:
  Fieller 1954, "Some Problems in Interval Estimation", J. R. Stat. Soc. B
    16(2), 175-185 (the interval for a ratio of linear coefficients)
"""

import math
from typing import Optional, Tuple

import numpy as np


def shape(b, scale: float, batch: np.ndarray) -> np.ndarray:
  """S(B)/S_min up to a factor, 1 + b/B, finite at b = 0 and b = inf; b is a
  scalar or a column of candidates."""
  b = np.asarray(b, np.float64)[..., None] / scale
  x = scale / batch
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(b > 1, 1.0 / b + x, 1.0 + b * x)


def profile_rss(curve: np.ndarray, s: np.ndarray) -> np.ndarray:
  """The residual sum of squares of S = c·curve, minimised over c."""
  z = curve / s
  c = z.sum(-1) / (z * z).sum(-1)
  return ((1.0 - c[..., None] * z) ** 2).sum(-1)


def free_fit(batch: np.ndarray, s: np.ndarray, scale: float
             ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """S_min, E_min/scale and the residual sum of squares of the unconstrained
  least-squares fit (either term may come out negative); rows of s are
  datasets."""
  x1, x2 = 1.0 / s, (scale / batch) / s
  a11, a12, a22 = (x1 * x1).sum(-1), (x1 * x2).sum(-1), (x2 * x2).sum(-1)
  r1, r2 = x1.sum(-1), x2.sum(-1)
  det = a11 * a22 - a12 * a12
  beta1, beta2 = (a22 * r1 - a12 * r2) / det, (a11 * r2 - a12 * r1) / det
  rss = ((1.0 - beta1[..., None] * x1 - beta2[..., None] * x2) ** 2).sum(-1)
  return beta1, beta2, rss


def best_rss(batch: np.ndarray, s: np.ndarray, scale: float) -> np.ndarray:
  """The residual sum of squares of the best curve with S_min, E_min >= 0:
  the free fit where both of its terms are, else the better of the two edges
  b = 0 and b = inf (a convex fit whose free optimum is infeasible has its
  constrained one on the boundary)."""
  beta1, beta2, rss = free_fit(batch, s, scale)
  edges = np.minimum(profile_rss(shape(0.0, scale, batch), s),
                     profile_rss(shape(math.inf, scale, batch), s))
  return np.where((beta1 >= 0) & (beta2 >= 0), rss, edges)


def _t_within(t: float, dof: int) -> float:
  """P(|T| <= t) for Student's T with an integer dof, in closed form
  (Abramowitz & Stegun 26.7.3-4)."""
  theta = math.atan(t / math.sqrt(dof))
  sin, cos2 = math.sin(theta), math.cos(theta) ** 2
  if dof % 2 == 0:
    term = total = 1.0
    for k in range(1, dof // 2):
      term *= (2 * k - 1) / (2 * k) * cos2
      total += term
    return sin * total
  if dof == 1:
    return 2 * theta / math.pi
  term = total = math.cos(theta)
  for k in range(1, (dof - 1) // 2):
    term *= (2 * k) / (2 * k + 1) * cos2
    total += term
  return 2 / math.pi * (theta + sin * total)


def f_quantile(level: float, dof: int) -> float:
  """The level-quantile of F(1, dof) = T², by bisection on T's angle."""
  lo, hi = 0.0, math.pi / 2
  for _ in range(100):
    mid = 0.5 * (lo + hi)
    if _t_within(math.sqrt(dof) * math.tan(mid), dof) < level:
      lo = mid
    else:
      hi = mid
  return dof * math.tan(hi) ** 2


def _statistic(batch, s, scale, curve, admissible: bool, floor: float) -> np.ndarray:
  """How much forcing the curve (c refitted) raises the residual sum of
  squares over the free fit (admissible False: Fieller's statistic for the
  ratio E_min/S_min) or over the best curve with S_min, E_min >= 0 (True),
  in units of that fit's residual variance, at least floor²."""
  reference = float(best_rss(batch, s, scale) if admissible else free_fit(batch, s, scale)[2])
  variance = max(reference / (batch.size - 2), floor * floor)
  return (profile_rss(curve, s) - reference) / variance


def _edge(stat, grid: np.ndarray, outside: int, inside: int) -> float:
  """Where stat crosses 0 between grid[outside] (> 0) and grid[inside] (<= 0),
  by bisection in log b. Next to b = 0 or b = inf (no log) the finite point:
  the outside one when the inside one is 0 or inf, so the bound stays wide."""
  lo, hi = float(grid[outside]), float(grid[inside])
  if not 0 < hi < math.inf:
    return lo
  if not 0 < lo < math.inf:
    return hi
  lo, hi = math.log(lo), math.log(hi)
  for _ in range(60):
    mid = 0.5 * (lo + hi)
    if stat(math.exp(mid)) <= 0:
      hi = mid
    else:
      lo = mid
  return math.exp(hi)


def _accepted(batch, s, scale, b_hat, admissible, floor, threshold
              ) -> Optional[Tuple[float, float]]:
  """The hull of {b in [0, inf] : statistic(b) <= threshold}; None if empty."""

  def stat(b):  # the statistic minus the threshold: <= 0 inside
    return _statistic(batch, s, scale, shape(b, scale, batch), admissible, floor) - threshold

  # b_hat, the statistic's minimum over [0, inf], joins the grid, so a set
  # narrower than the grid's 10 % spacing is still found, by bisection
  # either side of it.
  grid = np.unique(np.concatenate(
      [[0.0, b_hat, math.inf], scale * np.exp(np.linspace(-30.0, 30.0, 601))]))
  inside = np.flatnonzero(stat(grid) <= 0)
  if not inside.size:
    return None
  first, last = inside[0], inside[-1]
  low = 0.0 if first == 0 else _edge(stat, grid, first - 1, first)
  high = math.inf if last == grid.size - 1 else _edge(stat, grid, last + 1, last)
  return low, high


def profile_interval(batch: np.ndarray, s: np.ndarray, scale: float, b_hat: float, *,
                     floor: float, level: float) -> Tuple[float, float, bool]:
  """A `level` interval for B_crit, and whether any admissible curve fits.

  First Fieller's interval for the ratio E_min/S_min, as a profile
  likelihood: the b in [0, inf] whose best curve (c refitted) raises the
  residual sum of squares over the free fit by less than the level-quantile
  of F(1, n - 2), in units of the free fit's residual variance. S is linear
  in (S_min, E_min) and B_crit = b is the linear constraint E_min = b·S_min,
  so at the true b the statistic is F(1, n - 2) whatever b and the noise
  are (measured on lognormal noise of 2-20 % over 3-6 batches: its 90 %
  quantile within 7 % of F's, on the conservative side); a variance floored
  at the rounding of whole updates only lowers it. That set holds b_hat,
  the statistic's minimum over [0, inf], whenever it is not empty. It is
  empty when even the best admissible curve is rejected (S rising with B,
  or falling faster than 1/B, beyond the noise); then the interval is that
  of the curves that fit about as well as the best admissible one (the same
  statistic and threshold measured from it, with its residual variance), a
  ray from b_hat = 0 or inf, and the flag is False.

  Args:
    batch, s: the reached batches and their S.
    scale: a batch in their range (the geometric mean), for conditioning.
    b_hat: the best admissible B_crit (0.0 and inf included).
    floor: the smallest relative noise the data can have (an exact fit is
      widened to it).
    level: the interval's level.

  Returns:
    (low, high, fits): 0.0 or inf where the set reaches that end.
  """
  threshold = f_quantile(level, batch.size - 2)
  free = _accepted(batch, s, scale, b_hat, False, floor, threshold)
  if free is not None:
    return free[0], free[1], True
  low, high = _accepted(batch, s, scale, b_hat, True, floor, threshold) or (b_hat, b_hat)
  return min(low, b_hat), max(high, b_hat), False
