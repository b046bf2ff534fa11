"""Means over seeds with their confidence intervals, and when two differ.

A study reruns a cell's chosen learning rate with several seeds (a seed
changes the initialization and the data order). Its number is the mean over
those runs with a two-sided Student-t interval (`mean_interval`); one run
gives a number and no interval. Two numbers are called different only when
they are `separated`: where both sides share at least two seeds, the paired
difference's interval (`paired_difference`, one difference per shared
seed) excludes 0; otherwise both have an interval and the two intervals do
not overlap. Anything else is a tie within seed noise.
"""

import dataclasses
import math
from typing import Dict, Mapping, Optional, Sequence, Tuple

from scipy import stats

LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A mean over seeds: `low`/`high` are None when there is one value."""
  mean: float
  low: Optional[float]
  high: Optional[float]
  n: int
  by_seed: Tuple[Tuple[int, float], ...] = ()  # (seed, value); () when unknown
  level: float = LEVEL

  @property
  def has_interval(self) -> bool:
    return self.low is not None

  def seeds(self) -> Dict[int, float]:
    return dict(self.by_seed)

  def text(self, scale: float = 100.0, digits: int = 2) -> str:
    """"88.10 ± 1.20 (3 seeds)", or "88.10 (1 seed, no interval)"."""
    mean = f"{scale * self.mean:.{digits}f}"
    if not self.has_interval:
      return f"{mean} (1 seed, no interval)"
    half = scale * (self.high - self.low) / 2
    return f"{mean} ± {half:.{digits}f} ({self.n} seeds)"


def t_quantile(p: float, df: int) -> float:
  """The p quantile of Student's t with `df` degrees of freedom."""
  if df < 1:
    raise ValueError(f"degrees of freedom must be >= 1, got {df}")
  return float(stats.t.ppf(p, df))


def mean_interval(values: Sequence[float], level: float = LEVEL,
                  seeds: Optional[Sequence[int]] = None) -> Estimate:
  """The mean of `values` with a two-sided Student-t interval at `level`
  (none for one value); `seeds` names each value's seed, for pairing."""
  values = [float(v) for v in values]
  if not values:
    raise ValueError("mean_interval needs at least one value")
  if seeds is not None and len(seeds) != len(values):
    raise ValueError(f"{len(seeds)} seeds for {len(values)} values")
  n, mean = len(values), math.fsum(values) / len(values)
  by_seed = tuple(zip(seeds, values)) if seeds is not None else ()
  if n == 1:
    return Estimate(mean, None, None, 1, by_seed, level)
  sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
  half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
  return Estimate(mean, mean - half, mean + half, n, by_seed, level)


def shared_seeds(a: Estimate, b: Estimate) -> Tuple[int, ...]:
  """The seeds both estimates were measured on, in order."""
  other = b.seeds()
  return tuple(s for s in a.seeds() if s in other)


def paired_difference(a: Estimate, b: Estimate,
                      level: float = LEVEL) -> Optional[Estimate]:
  """a − b over the seeds both share, one difference per seed, with its
  interval; None when they share fewer than two seeds."""
  shared = shared_seeds(a, b)
  if len(shared) < 2:
    return None
  first, second = a.seeds(), b.seeds()
  return mean_interval([first[s] - second[s] for s in shared], level, shared)


def difference(a: Estimate, b: Estimate) -> Tuple[float, Optional[Estimate]]:
  """(mean of a − mean of b, the paired difference or None)."""
  return a.mean - b.mean, paired_difference(a, b, min(a.level, b.level))


def separated(a: Estimate, b: Estimate) -> bool:
  """Whether a and b differ beyond seed noise: the paired difference's
  interval excludes 0 where they share two seeds or more, else both have an
  interval and the intervals do not overlap."""
  paired = paired_difference(a, b, min(a.level, b.level))
  if paired is not None:
    return paired.has_interval and (paired.low > 0 or paired.high < 0)
  if not (a.has_interval and b.has_interval):
    return False
  return a.low > b.high or b.low > a.high


def order(a: Estimate, b: Estimate) -> int:
  """+1 when a is separated above b, -1 below, 0 for a tie."""
  if not separated(a, b):
    return 0
  return 1 if a.mean > b.mean else -1


def seeds_text(a: Estimate, b: Estimate) -> str:
  """How the comparison of a and b was made, in words."""
  paired = paired_difference(a, b, min(a.level, b.level))
  if paired is not None:
    return f"paired over {paired.n} shared seeds"
  return f"{a.n} against {b.n} seeds"


def from_mapping(values: Mapping[int, float], level: float = LEVEL) -> Estimate:
  """mean_interval of {seed: value}."""
  seeds = sorted(values)
  return mean_interval([values[s] for s in seeds], level, seeds)


def shift(estimate: Estimate, delta: float) -> Estimate:
  """The estimate moved by `delta` (every seed's value too): to ask whether
  a number is more than `delta` below another."""
  moved = lambda v: None if v is None else v + delta
  return dataclasses.replace(
      estimate, mean=estimate.mean + delta, low=moved(estimate.low),
      high=moved(estimate.high), by_seed=tuple((s, v + delta) for s, v in estimate.by_seed))
