"""The search rules of the steps-to-target protocol, kept free of training code:
which learning rates to try next at a batch, and which batch to measure next.
Pure, so that each can be tested on numbers known by hand.

Shallue et al. (2019) measure, for each batch size B, the fewest updates S(B)
that reach a held-out target, searching the learning rate until the best one
is bracketed.

Reference:
  Shallue et al. 2019, "Measuring the Effects of Data Parallelism on Neural
    Network Training", https://arxiv.org/abs/1811.03600
"""

import dataclasses
import math
from typing import List, Mapping, Optional, Sequence, Tuple

REACHED = "reached"


NOT_REACHED = "not_reached"


DIVERGED = "diverged"


STATUSES = (REACHED, NOT_REACHED, DIVERGED)


# Learning rates closer than this (relative) are the same grid point.
LR_RTOL = 1e-6


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
