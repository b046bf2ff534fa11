"""The search rules of the steps-to-target protocol, kept free of training code:
which learning rates to try next at a batch, and which batch to measure next.
Pure, so that each can be tested on numbers known by hand.

The learning-rate rule is written once for trials that carry (learning rate,
status, score), a higher score better: lbt.limit scores a trial by minus its
updates to target, a tuned study (`lbt.studies.cell_search`) by its final
validation accuracy.

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

# A trial's status. The generic search knows two: it finished (with a score,
# higher is better, or None: finished but unscored), or it diverged.
FINISHED = "finished"


DIVERGED = "diverged"


# lbt.limit's names for a finished trial: it reached the target (scored by
# minus its updates to target, so fewer is better), or it did not.
REACHED = "reached"


NOT_REACHED = "not_reached"


STATUSES = (FINISHED, DIVERGED, REACHED, NOT_REACHED)


# Learning rates closer than this (relative) are the same grid point.
LR_RTOL = 1e-6


DEFAULT_MAX_TRIALS = 10


@dataclasses.dataclass(frozen=True)
class Trial:
  """One learning rate run at one setting: finished (scored, or unscored) or
  diverged. lbt.limit's trials say REACHED (with updates_to_target, and
  examples_to_target; the score is then -updates_to_target) or NOT_REACHED
  (unscored), and a diverged one may say at which update it diverged
  (`diverged_at`, for `as_capped`)."""
  learning_rate: float
  status: str
  score: Optional[float] = None
  updates_to_target: Optional[int] = None
  examples_to_target: Optional[int] = None
  diverged_at: Optional[int] = None

  def __post_init__(self):
    if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
      raise ValueError(f"learning_rate must be positive and finite, got {self.learning_rate}")
    if self.status not in STATUSES:
      raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
    if (self.status == REACHED) != (self.updates_to_target is not None):
      raise ValueError(f"updates_to_target is set exactly when status is {REACHED!r}; "
                       f"got status {self.status!r}, updates {self.updates_to_target}")
    if self.status == REACHED:
      if self.score not in (None, -self.updates_to_target):
        raise ValueError(f"a reached trial's score is -updates_to_target, got {self.score}")
      object.__setattr__(self, "score", -self.updates_to_target)
    elif self.score is not None and (self.status != FINISHED or not math.isfinite(self.score)):
      raise ValueError(f"only a finished trial has a score, a finite one; got status "
                       f"{self.status!r}, score {self.score}")
    if self.diverged_at is not None and self.status != DIVERGED:
      raise ValueError(f"diverged_at is for a diverged trial, got status {self.status!r}")

  @property
  def finished(self) -> bool:
    return self.status != DIVERGED


@dataclasses.dataclass(frozen=True)
class Bracket:
  """Whether a search's best trial is bracketed, why (or why not) in words,
  and the learning rates that bracket it on each side (None where none does;
  the best's own where its side is flat within the tie)."""
  bracketed: bool
  reason: str
  low: Optional[float]
  high: Optional[float]


def _check_tie(tie: float) -> None:
  if not (math.isfinite(tie) and tie >= 0):
    raise ValueError(f"tie must be finite and >= 0, got {tie}")


def best_trial(trials: Sequence[Trial], tie: float = 0.0) -> Optional[Trial]:
  """The best-scoring trial; None if no trial has a score.

  Scores within `tie` of the best are ties (lbt.limit's updates are counted
  at the evaluation interval, so neighbours often tie exactly; an accuracy
  ties within its standard error). Ties go to the median learning rate of
  the tied ones (the lower middle of an even count): a plateau of equally
  good rates brackets its best, the grid does not walk off along it, and the
  choice does not depend on the order the trials ran in.
  """
  _check_tie(tie)
  scored = [t for t in trials if t.score is not None]
  if not scored:
    return None
  top = max(t.score for t in scored)
  tied = sorted((t for t in scored if t.score >= top - tie), key=lambda t: t.learning_rate)
  return tied[(len(tied) - 1) // 2]


def _close(a: float, b: float) -> bool:
  return abs(a - b) <= LR_RTOL * max(abs(a), abs(b))


def _within_step(lr: float, best: float, direction: int) -> bool:
  """Whether lr lies on the `direction` side of best, at most one 2x step away."""
  ratio = (lr / best) ** direction
  return 1 + LR_RTOL < ratio <= 2 * (1 + LR_RTOL)


def _nearest(trials: Sequence[Trial], lr: float) -> Trial:
  return min(trials, key=lambda t: (abs(math.log(t.learning_rate / lr)), t.learning_rate))


def _side(trials: Sequence[Trial], best: Trial, direction: int, tie: float
          ) -> Tuple[Optional[float], str]:
  """The learning rate bracketing the best on one side (-1 below, +1 above;
  None if none does) and the words for it."""
  name, lr = ("below" if direction < 0 else "above"), best.learning_rate
  beyond = [t for t in trials if (t.learning_rate / lr) ** direction > 1 + LR_RTOL]
  near = [t for t in beyond if (t.finished or direction > 0)
          and _within_step(t.learning_rate, lr, direction)]
  if near:
    t = _nearest(near, lr)
    return t.learning_rate, f"{t.learning_rate:.4g} ({t.status}) {name}"
  inner = [t for t in trials if t.finished and (t.learning_rate / lr) ** -direction > 1 + LR_RTOL]
  if inner and not any(t.finished for t in beyond):
    t = _nearest(inner, lr)
    if t.score is not None and best.score - t.score <= tie:
      close = "ties it" if tie == 0 else f"scores within {tie:g} of it"
      return lr, f"flat within tie {name} ({t.learning_rate:.4g} {close})"
  if not beyond:
    return None, f"best at the {'lowest' if direction < 0 else 'highest'} LR tried"
  step = [t for t in beyond if _within_step(t.learning_rate, lr, direction)]
  if step:  # only below: above, any trial within a step brackets
    return None, (f"diverged at {_nearest(step, lr).learning_rate:.4g}, one grid step below "
                  "the best, and a divergence below is not a bracket")
  if direction < 0 and not any(t.finished for t in beyond):
    return None, "only divergences below the best, and a divergence below is not a bracket"
  return None, f"no trial within one grid step {name} the best"


def bracket(trials: Sequence[Trial], tie: float = 0.0, *,
            max_trials: Optional[int] = None) -> Bracket:
  """Whether the best trial is bracketed: a finished trial at most one 2x
  grid step below it and one above it, where a divergence above counts as
  the upper side (the optimum is below it) and one below does not (it says
  nothing of where the optimum is). A side with no finished trial beyond the
  best counts as bracketed when its nearest trial on the other side scores
  within `tie` of the best (flat within tie: a plateau does not extend
  forever). With max_trials, a search that used them all says so."""
  best = best_trial(trials, tie)
  capped = max_trials is not None and len(trials) >= max_trials
  cap = f"trial cap ({max_trials}) reached with " if capped else ""
  if best is None:
    reason = ("nothing tried" if not trials else "nothing finished: every trial diverged"
              if not any(t.finished for t in trials) else
              "nothing scored: no finished trial has a score")
    return Bracket(False, cap + reason, None, None)
  (low, why_low), (high, why_high) = (_side(trials, best, d, tie) for d in (-1, 1))
  if low is not None and high is not None:
    return Bracket(True, f"bracketed around the best, {best.learning_rate:.4g}: {why_low}; "
                         f"{why_high}", low, high)
  why = "; ".join(w for w, side in ((why_low, low), (why_high, high)) if side is None)
  return Bracket(False, cap + why, low, high)


def _grid_neighbour(lr: float, guess: float, direction: int) -> float:
  """The grid point guess·2^k nearest lr strictly below (-1) or above (+1)."""
  k = math.log2(lr / guess)
  step = math.ceil(k - LR_RTOL) - 1 if direction < 0 else math.floor(k + LR_RTOL) + 1
  return guess * 2.0 ** step


def _half_step(lr: float, guess: float) -> bool:
  """Whether lr is a √2 point of the grid, guess·2^(k + 1/2)."""
  k = math.log2(lr / guess)
  return abs(k - math.floor(k) - 0.5) < 1e-6


def _nothing_scored(trials: Sequence[Trial], guess: float) -> List[float]:
  """Up while the highest LR did not diverge and the step stays below every
  divergence, else down (lower LRs are more stable but slower, and may still
  not score: that is a result)."""
  ordered = sorted(trials, key=lambda t: t.learning_rate)
  up = _grid_neighbour(ordered[-1].learning_rate, guess, +1)
  diverged = [t.learning_rate for t in trials if not t.finished]
  if ordered[-1].finished and (not diverged or up < min(diverged) * (1 - LR_RTOL)):
    return [up]
  return [_grid_neighbour(ordered[0].learning_rate, guess, -1)]


def next_learning_rates(trials: Sequence[Trial], guess: float, *,
                        max_trials: int = DEFAULT_MAX_TRIALS, tie: float = 0.0,
                        refine: bool = False) -> List[float]:
  """The learning rates to run next at one setting, ascending; [] when done.

  The grid stays on the points guess·2^k (guess: the scaling rule's learning
  rate), so settings share comparable grids. It starts at guess/2, guess,
  2·guess and grows until the best trial (`best_trial`, ties within `tie`)
  is bracketed (`bracket`): each unbracketed side gets the grid point next
  to the best on that side. So a best at the lowest LR extends down, at the
  highest up; a divergence below the best neither brackets it nor stops the
  search above it; a divergence above it closes the top, and nothing is
  proposed at or above one. A side whose grid point already diverged (below
  the best) cannot be bracketed: the search ends there unbracketed, and
  `bracket` says why. Nothing scored: extend up while the highest LR did not
  diverge, else down. With refine, once bracketed, the √2 steps on each side
  of the best not yet tried are proposed once (a trial at a √2 point means
  that was done); then the search ends, or extends on the 2x grid again if
  a √2 point became an unbracketed best. Never proposes an LR already tried,
  nor more than max_trials trials in all.

  The proposals are a function of the set of trials, not of the order they
  ran in. A caller that stops trials early (lbt.limit stops one that can no
  longer beat its setting's best) must present them as `as_capped` does, so
  that a trial stopped early and the same trial run to its end are the same
  input.
  """
  if not (math.isfinite(guess) and guess > 0):
    raise ValueError(f"guess must be positive and finite, got {guess}")
  if max_trials < 3:
    raise ValueError(f"max_trials must be >= 3 (a bracket needs three), got {max_trials}")
  _check_tie(tie)
  if not trials:
    return [guess / 2, guess, 2 * guess]
  room = max_trials - len(trials)
  if room <= 0:
    return []
  best = best_trial(trials, tie)
  if best is None:
    wanted = _nothing_scored(trials, guess)
  else:
    state = bracket(trials, tie)
    if state.bracketed:
      refined = any(_half_step(t.learning_rate, guess) for t in trials)
      wanted = [best.learning_rate / math.sqrt(2), best.learning_rate * math.sqrt(2)] if (
          refine and not refined) else []
    else:
      wanted = [_grid_neighbour(best.learning_rate, guess, d)
                for d, side in ((-1, state.low), (1, state.high)) if side is None]
    ceiling = min((t.learning_rate for t in trials if not t.finished
                   and t.learning_rate > best.learning_rate), default=math.inf)
    wanted = [lr for lr in wanted if lr < ceiling * (1 - LR_RTOL)]
  fresh = [lr for lr in wanted if not any(_close(lr, t.learning_rate) for t in trials)]
  return sorted(fresh)[:room]


def as_capped(trials: Sequence[Trial]) -> List[Trial]:
  """lbt.limit's trials of one batch as if every one had been stopped at the
  batch's best count S* (the fewest updates to target), as a trial that can
  no longer beat the best is: reached later than S*, or diverged after S*
  (diverged_at > S*), reads as not reached. Run one by one, trials are
  stopped at the best count of their time (>= S*); run side by side, to
  their end. Either way this gives the same trials, so the search decides
  the same and limit.json is the same. A divergence whose update is unknown
  stays one."""
  best = best_trial(trials)
  if best is None:
    return list(trials)
  cap = best.updates_to_target
  late = lambda t: ((t.status == REACHED and t.updates_to_target > cap) or (
      t.status == DIVERGED and t.diverged_at is not None and t.diverged_at > cap))
  return [Trial(t.learning_rate, NOT_REACHED) if late(t) else t for t in trials]


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
