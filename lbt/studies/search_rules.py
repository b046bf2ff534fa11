"""The learning-rate search, kept free of training code: which learning rates
to try next at one setting, which one is best, whether it is bracketed, and
when two scores tie. Pure, so that each rule can be tested on numbers known
by hand and on synthetic learning-rate curves.

The rule is written once for trials that carry (learning rate, status,
score), a higher score better: lbt.limit scores a trial by minus its updates
to target (`lbt.studies.limit_rules`), a tuned study
(`lbt.studies.cell_search`) by its validation accuracy (the mean over its
seeds where a learning rate runs several).

Shallue et al. (2019) measure, for each batch size B, the fewest updates S(B)
that reach a held-out target, searching the learning rate until the best one
is bracketed; Li et al. (2024) find learning-rate curves with more than one
peak, so the grid also looks two doublings past the best on each side.

References:
  Shallue et al. 2019, "Measuring the Effects of Data Parallelism on Neural
    Network Training", https://arxiv.org/abs/1811.03600
  Li et al. 2024, "Surge phenomenon in optimal learning rate and batch size
    scaling", https://arxiv.org/abs/2405.14578
"""

import dataclasses
import math
from typing import ClassVar, List, Optional, Sequence, Tuple

from lbt.studies.statuses import DIVERGED, FINISHED

# A trial's status: the generic search knows two, it finished (with a score,
# higher is better, or None: finished but unscored), or it diverged.


# Learning rates closer than this (relative) are the same grid point; the one
# tolerance of the search.
LR_RTOL = 1e-6


DEFAULT_MAX_TRIALS = 10


# Before choosing, the grid reaches this many doublings past the best on each
# side (a second peak 4x away is then seen), unless a divergence or the trial
# cap stops it.
COVER_DOUBLINGS = 2


# Two scores tie when they differ by less than TIE_FACTOR standard errors of
# their difference (`tie_tolerance`).
TIE_FACTOR = 1.0


MIN_TIE = 1e-4  # the tie of degenerate accuracies (0 or 1 on every seed)


CAPPED = "trial cap reached"


@dataclasses.dataclass(frozen=True)
class Trial:
  """One learning rate run at one setting: finished (scored, or unscored) or
  diverged. A score that is a mean over seeds keeps the seeds' own scores
  (`seed_scores`), from which `tie` measures the seed noise. Subclasses
  (lbt.limit's `limit_rules.TargetTrial`) name their own statuses in STATUSES;
  every status but DIVERGED is finished."""
  STATUSES: ClassVar[Tuple[str, ...]] = (FINISHED, DIVERGED)
  learning_rate: float
  status: str
  score: Optional[float] = None
  seed_scores: Tuple[float, ...] = ()

  def __post_init__(self):
    if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
      raise ValueError(f"learning_rate must be positive and finite, got {self.learning_rate}")
    if self.status not in self.STATUSES:
      raise ValueError(f"status must be one of {self.STATUSES}, got {self.status!r}")
    if self.score is not None and (not self.finished or not math.isfinite(self.score)):
      raise ValueError(f"only a finished trial has a score, a finite one; got status "
                       f"{self.status!r}, score {self.score}")
    if self.seed_scores and self.score is None:
      raise ValueError("seed_scores belong to a scored trial (their mean is its score)")

  @property
  def finished(self) -> bool:
    return self.status != DIVERGED


@dataclasses.dataclass(frozen=True)
class Bracket:
  """Whether a search's best trial is bracketed, and why (or why not) in words.

  Attributes:
    bracketed: beyond each end of the tied set, a trial that scores worse by
      more than the tie (or, above, a divergence).
    reason: the words for it, "trial cap reached" first where the cap stopped
      the search unbracketed.
    low, high: the nearest learning rate beyond each end of the tied set that
      closes that side (None where none does).
    tied_low, tied_high: the lowest and highest learning rate scoring within
      the tie of the best (None when nothing scored).
    coverage: whether the grid reaches COVER_DOUBLINGS doublings past the best
      on each side, and why not, in words.
  """
  bracketed: bool
  reason: str
  low: Optional[float]
  high: Optional[float]
  tied_low: Optional[float] = None
  tied_high: Optional[float] = None
  coverage: str = ""


def _check_tie(tie: float) -> None:
  if not (math.isfinite(tie) and tie >= 0):
    raise ValueError(f"tie must be finite and >= 0, got {tie}")


def _close(a: float, b: float) -> bool:
  return abs(a - b) <= LR_RTOL * max(abs(a), abs(b))


def _beyond(lr: float, edge: float, direction: int) -> bool:
  """Whether lr lies strictly on the `direction` side (-1 below, +1 above) of edge."""
  return (lr / edge) ** direction > 1 + LR_RTOL


def tie_tolerance(trials: Sequence[Trial], validation_examples: int) -> float:
  """The tie tolerance of a tuned search: TIE_FACTOR standard errors of the
  difference between two learning rates' scores, each the mean accuracy of
  n seeds (n: the most seeds any trial has, 1 without seeds).

  Two estimates of that standard error, the larger taken: the seed noise
  measured on the trials, s·√(2/n) with s the pooled standard deviation of
  the seed scores about their rate's mean (every trial of two or more
  seeds; absent without them); and the binomial floor of the validation
  split, √(2·p(1 - p)/(N·n)) at the best score p (0.5 when nothing scored)
  on N examples. Without seeds the tie is that binomial standard error; with
  them, never below it (three seeds may agree by chance). At least MIN_TIE.
  """
  if validation_examples <= 0:
    raise ValueError(f"a searched cell needs a validation split, got {validation_examples} "
                     "examples")
  seeded = [t.seed_scores for t in trials if len(t.seed_scores) >= 2]
  n = max((len(t.seed_scores) for t in trials), default=1) or 1
  scores = [t.score for t in trials if t.score is not None]
  p = min(max(max(scores, default=0.5), 0.0), 1.0)
  error = math.sqrt(2 * p * (1 - p) / (validation_examples * n))
  if seeded:
    squares = sum(sum((x - sum(s) / len(s)) ** 2 for x in s) for s in seeded)
    pooled = math.sqrt(squares / sum(len(s) - 1 for s in seeded))
    error = max(error, pooled * math.sqrt(2 / n))
  return max(TIE_FACTOR * error, MIN_TIE)


def tied(trials: Sequence[Trial], tie: float = 0.0) -> List[Trial]:
  """The trials scoring within `tie` of the best score, by learning rate."""
  _check_tie(tie)
  scored = [t for t in trials if t.score is not None]
  if not scored:
    return []
  top = max(t.score for t in scored)
  return sorted((t for t in scored if t.score >= top - tie), key=lambda t: t.learning_rate)


def best_trial(trials: Sequence[Trial], tie: float = 0.0) -> Optional[Trial]:
  """The best trial; None if no trial has a score.

  Scores within `tie` of the best are ties (lbt.limit's updates are counted
  at the evaluation interval, so neighbours often tie exactly; an accuracy
  ties within the noise `tie_tolerance` measures). Ties go to the tied trial
  nearest the centre of the tied range in log space (the geometric mean of
  its lowest and highest rate); of two equally near (the two middle ones of
  an even count), the better-scoring, the higher only when their scores are
  equal. A plateau of equally good rates is chosen at its middle, the choice
  leans neither way (always taking the higher of two would lean up by half a
  grid step wherever two tie), and it does not depend on the order the
  trials ran in.
  """
  ties = tied(trials, tie)
  if not ties:
    return None
  centre = math.sqrt(ties[0].learning_rate * ties[-1].learning_rate)
  distance = lambda t: abs(math.log(t.learning_rate / centre))
  nearest = min(distance(t) for t in ties)
  return max((t for t in ties if distance(t) <= nearest + LR_RTOL),
             key=lambda t: (t.score, t.learning_rate))


def _nearest(trials: Sequence[Trial], lr: float) -> Trial:
  return min(trials, key=lambda t: (abs(math.log(t.learning_rate / lr)), t.learning_rate))


def _side(trials: Sequence[Trial], edge: float, direction: int
          ) -> Tuple[Optional[float], str]:
  """The learning rate closing one end of the tied set (`edge`, its lowest
  or highest rate; -1 below, +1 above), None if none does, and the words.
  Every trial beyond the tied set scores worse by more than the tie (or is
  unscored); below, a divergence closes nothing."""
  name = "below" if direction < 0 else "above"
  beyond = [t for t in trials if _beyond(t.learning_rate, edge, direction)]
  closing = [t for t in beyond if t.finished or direction > 0]
  if closing:
    t = _nearest(closing, edge)
    worse = "diverged" if not t.finished else "scores worse by more than the tie" if (
        t.score is not None) else "finished unscored"
    return t.learning_rate, f"{t.learning_rate:.4g} {name} {worse}"
  if beyond:
    return None, (f"only divergences {name} the tied set (nearest "
                  f"{_nearest(beyond, edge).learning_rate:.4g}), and a divergence below "
                  "is not a bracket")
  edge_name = "lowest" if direction < 0 else "highest"
  return None, f"the tied set reaches the {edge_name} LR tried ({edge:.4g})"


def _ceiling(trials: Sequence[Trial], best: Trial) -> float:
  """The lowest divergence above the best: nothing is proposed at or above it."""
  return min((t.learning_rate for t in trials if not t.finished
              and _beyond(t.learning_rate, best.learning_rate, 1)), default=math.inf)


def _doublings(count: float) -> str:
  return "1 doubling" if abs(count - 1) < LR_RTOL else f"{count:.3g} doublings"


def _cover(trials: Sequence[Trial], best: Trial, direction: int
           ) -> Tuple[bool, str]:
  """Whether one side needs more grid (True) and the words for that side:
  covered when a trial lies COVER_DOUBLINGS doublings past the best; closed
  early by a divergence (above: any; below: the farthest trial diverged)."""
  name, lr = ("below" if direction < 0 else "above"), best.learning_rate
  beyond = [t for t in trials if _beyond(t.learning_rate, lr, direction)]
  far = max(beyond, key=lambda t: (t.learning_rate / lr) ** direction, default=None)
  distance = 0.0 if far is None else abs(math.log2(far.learning_rate / lr))
  reach = _doublings(distance)
  if distance >= COVER_DOUBLINGS - LR_RTOL:
    return False, f"{name}: {reach}"
  diverged = [t.learning_rate for t in beyond if not t.finished]
  if diverged and (direction > 0 or not far.finished):
    at = min(diverged) if direction > 0 else far.learning_rate
    return False, f"{name}: {reach}, closed by the divergence at {at:.4g}"
  return True, f"{name}: only {reach}"


def coverage(trials: Sequence[Trial], tie: float = 0.0,
             max_trials: Optional[int] = None) -> str:
  """How far past the best the grid reaches on each side, in words, and why
  it stops short of COVER_DOUBLINGS doublings where it does."""
  best = best_trial(trials, tie)
  if best is None:
    return "nothing scored"
  sides = [_cover(trials, best, d) for d in (-1, 1)]
  words = "; ".join(w for _, w in sides)
  if any(short for short, _ in sides) and max_trials is not None and len(trials) >= max_trials:
    words += f" ({CAPPED})"
  return words


def bracket(trials: Sequence[Trial], tie: float = 0.0, *,
            max_trials: Optional[int] = None) -> Bracket:
  """Whether the best trial is bracketed: beyond each end of the tied set
  (`tied`), a trial that scores worse by more than the tie, or a divergence
  above (the optimum is below it; one below says nothing of where the
  optimum is). A neighbour that only ties is part of the tied set, never a
  side, so a best whose tied set reaches an edge of the rates tried is not
  bracketed. With max_trials, a search that used them all says so."""
  capped = max_trials is not None and len(trials) >= max_trials
  cap = f"{CAPPED} ({max_trials}): " if capped else ""
  best = best_trial(trials, tie)
  if best is None:
    reason = ("nothing tried" if not trials else "nothing finished: every trial diverged"
              if not any(t.finished for t in trials) else
              "nothing scored: no finished trial has a score")
    return Bracket(False, cap + reason, None, None)
  ties = tied(trials, tie)
  low_edge, high_edge = ties[0].learning_rate, ties[-1].learning_rate
  (low, why_low), (high, why_high) = _side(trials, low_edge, -1), _side(trials, high_edge, 1)
  extent = dict(tied_low=low_edge, tied_high=high_edge,
                coverage=coverage(trials, tie, max_trials))
  span = f"best {best.learning_rate:.4g}, tied {low_edge:.4g}-{high_edge:.4g}"
  if low is not None and high is not None:
    return Bracket(True, f"bracketed ({span}): {why_low}; {why_high}", low, high, **extent)
  why = "; ".join(w for w, side in ((why_low, low), (why_high, high)) if side is None)
  return Bracket(False, f"{cap}not bracketed ({span}): {why}", low, high, **extent)


def _grid_neighbour(lr: float, guess: float, direction: int) -> float:
  """The grid point guess·2^k nearest lr strictly below (-1) or above (+1)."""
  k = math.log2(lr / guess)
  step = math.ceil(k - LR_RTOL) - 1 if direction < 0 else math.floor(k + LR_RTOL) + 1
  return guess * 2.0 ** step


def _half_step(lr: float, guess: float) -> bool:
  """Whether lr is a √2 point of the grid, guess·2^(k + 1/2)."""
  k = math.log2(lr / guess)
  return abs(k - math.floor(k) - 0.5) < LR_RTOL


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


def _to_bracket(trials: Sequence[Trial], guess: float, tie: float) -> List[float]:
  """The grid point next to each end of the tied set that is open, or closed
  only from more than one 2x step away (below: never where a trial diverged,
  the side then stays as it is)."""
  ties, state = tied(trials, tie), bracket(trials, tie)
  wanted = []
  for direction, edge, side in ((-1, ties[0].learning_rate, state.low),
                                (1, ties[-1].learning_rate, state.high)):
    if side is None or (side / edge) ** direction > 2 * (1 + LR_RTOL):
      wanted.append(_grid_neighbour(edge, guess, direction))
  return wanted


def _to_cover(trials: Sequence[Trial], best: Trial, guess: float) -> List[float]:
  """The grid point past the farthest trial of each side short of coverage."""
  wanted = []
  for direction in (-1, 1):
    short, _ = _cover(trials, best, direction)
    if short:
      rates = [t.learning_rate for t in trials]
      far = min(rates) if direction < 0 else max(rates)
      wanted.append(_grid_neighbour(far, guess, direction))
  return wanted


def _to_refine(trials: Sequence[Trial], best: Trial, guess: float) -> List[float]:
  """The √2 steps on each side of the best, once (a trial at a √2 point of
  the grid means it was done)."""
  if any(_half_step(t.learning_rate, guess) for t in trials):
    return []
  return [best.learning_rate / math.sqrt(2), best.learning_rate * math.sqrt(2)]


def _to_fill(trials: Sequence[Trial], best: Trial, wanted: int) -> List[float]:
  """Up to `wanted` - len(trials) √2 steps around the best not yet tried,
  within three doublings, nearest first on each side (`_alternate` orders
  the sides)."""
  if len(trials) >= wanted:
    return []
  steps = [best.learning_rate * math.sqrt(2) ** k for k in range(-6, 7) if k]
  return [lr for lr in steps if not any(_close(lr, t.learning_rate) for t in trials)]


def _alternate(rates: Sequence[float], trials: Sequence[Trial], best: Trial) -> List[float]:
  """The proposals nearest the best first, alternating sides, starting on
  the side with fewer trials (above on equal counts), so that a cap or a
  fill keeps as many proposals above the best as below."""
  lr = best.learning_rate
  sides = {d: sorted((r for r in rates if _beyond(r, lr, d)), key=lambda r: abs(math.log(r / lr)))
           for d in (-1, 1)}
  count = {d: sum(_beyond(t.learning_rate, lr, d) for t in trials) for d in (-1, 1)}
  first = -1 if count[-1] < count[1] else 1
  order = []
  for i in range(max(len(sides[-1]), len(sides[1]))):
    order += [s[i] for s in (sides[first], sides[-first]) if i < len(s)]
  return order


def next_learning_rates(trials: Sequence[Trial], guess: float, *,
                        max_trials: int = DEFAULT_MAX_TRIALS, tie: float = 0.0,
                        refine: bool = False, min_trials: int = 0) -> List[float]:
  """The learning rates to run next at one setting, ascending; [] when done.

  The grid stays on the points guess·2^k (guess: the scaling rule's learning
  rate), so settings share comparable grids. It starts at guess/2, guess,
  2·guess; then, in this order, the first stage with something to propose:

  1. Bracket (`bracket`): the grid point next to each end of the tied set
     that is open, or closed only from more than one 2x step away. A best
     at the lowest LR extends down, at the highest up; a divergence below
     the tied set neither closes it nor is passed.
  2. Cover: the grid point past the farthest trial of each side that does not
     reach COVER_DOUBLINGS doublings from the best (a divergence above, or a
     farthest trial below that diverged, ends that side).
  3. Refine (with refine): the √2 steps on each side of the best, once; a √2
     point that becomes a best at an open end extends on the 2x grid again.
  4. Fill: √2 steps around the best until the setting has min_trials trials.

  Nothing scored: extend up while the highest LR did not diverge, else down.
  Nothing is proposed at or above a divergence above the best, nor an LR
  already tried, nor more than max_trials trials in all; where the cap cuts
  the proposals, the sides alternate (`_alternate`).

  The proposals are a function of the set of trials, not of the order they
  ran in. A caller that stops trials early (lbt.limit stops one that can no
  longer beat its setting's best) must present them as
  `limit_rules.as_capped` does, so that a trial stopped early and the same
  trial run to its end are the same input.
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
    return _fresh(_nothing_scored(trials, guess), trials)[:room]
  stages = (lambda: _to_bracket(trials, guess, tie), lambda: _to_cover(trials, best, guess),
            lambda: _to_refine(trials, best, guess) if refine else [],
            lambda: _to_fill(trials, best, min(min_trials, max_trials)))
  ceiling = _ceiling(trials, best)
  for stage in stages:
    wanted = [lr for lr in _fresh(stage(), trials) if lr < ceiling * (1 - LR_RTOL)]
    if wanted:
      limit = room if stage is not stages[-1] else min(room, min_trials - len(trials))
      return sorted(_alternate(wanted, trials, best)[:limit])
  return []


def _fresh(rates: Sequence[float], trials: Sequence[Trial]) -> List[float]:
  """The rates not yet tried."""
  return [lr for lr in rates if not any(_close(lr, t.learning_rate) for t in trials)]
