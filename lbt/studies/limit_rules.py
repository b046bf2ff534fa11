"""The rules only the steps-to-target protocol (`lbt.limit`) has: its trials'
statuses (the target reached, or not), its trials read as if stopped at the
best count, and which batch to measure next. The learning-rate search itself
is the tuned study's (`lbt.studies.search_rules`), on scores of minus the
updates to target.

Shallue et al. (2019) measure, for each batch size B, the fewest updates S(B)
that reach a held-out target; batches double until S(B) stops falling.

Reference:
  Shallue et al. 2019, "Measuring the Effects of Data Parallelism on Neural
    Network Training", https://arxiv.org/abs/1811.03600
"""

import dataclasses
from typing import List, Mapping, Optional, Sequence, Tuple

from lbt.studies import search_rules

# A finished trial reached the target (scored by minus its updates to target,
# so fewer is better), or it did not; search_rules.DIVERGED otherwise.
REACHED = "reached"


NOT_REACHED = "not_reached"


# The relative cut in S(B) that a doubling of the batch must buy.
MIN_GAIN = 0.10


@dataclasses.dataclass(frozen=True)
class TargetTrial(search_rules.Trial):
  """One learning rate at one batch: REACHED (with updates_to_target and
  examples_to_target; the score is then -updates_to_target), NOT_REACHED
  (unscored) or DIVERGED, which may say at which update it diverged
  (`diverged_at`, for `as_capped`)."""
  STATUSES = (REACHED, NOT_REACHED, search_rules.DIVERGED)
  updates_to_target: Optional[int] = None
  examples_to_target: Optional[int] = None
  diverged_at: Optional[int] = None

  def __post_init__(self):
    if (self.status == REACHED) != (self.updates_to_target is not None):
      raise ValueError(f"updates_to_target is set exactly when status is {REACHED!r}; "
                       f"got status {self.status!r}, updates {self.updates_to_target}")
    if self.status == REACHED:
      if self.score not in (None, -self.updates_to_target):
        raise ValueError(f"a reached trial's score is -updates_to_target, got {self.score}")
      object.__setattr__(self, "score", -self.updates_to_target)
    elif self.score is not None:
      raise ValueError(f"only a reached trial has a score; got status {self.status!r}, "
                       f"score {self.score}")
    if self.diverged_at is not None and self.status != search_rules.DIVERGED:
      raise ValueError(f"diverged_at is for a diverged trial, got status {self.status!r}")
    super().__post_init__()


def as_capped(trials: Sequence[TargetTrial]) -> List[TargetTrial]:
  """A batch's trials as if every one had been stopped at the batch's best
  count S* (the fewest updates to target), as a trial that can no longer
  beat the best is: reached later than S*, or diverged after S*
  (diverged_at > S*), reads as not reached. Run one by one, trials are
  stopped at the best count of their time (>= S*); run side by side, to
  their end. Either way this gives the same trials, so the search decides
  the same and limit.json is the same. A divergence whose update is unknown
  stays one."""
  best = search_rules.best_trial(trials)
  if best is None:
    return list(trials)
  cap = best.updates_to_target
  late = lambda t: ((t.status == REACHED and t.updates_to_target > cap) or (
      t.status == search_rules.DIVERGED and t.diverged_at is not None and t.diverged_at > cap))
  return [TargetTrial(t.learning_rate, NOT_REACHED) if late(t) else t for t in trials]


def doubling(start: int, max_batch: int) -> List[int]:
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
  for batch in doubling(start, max_batch):
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
               min_gain: float = MIN_GAIN) -> Optional[int]:
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
                      min_gain: float = MIN_GAIN) -> Optional[int]:
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
