"""The learning rate of a study's cell, searched on the validation split.

A study file marks a cell as searched (`points.Point(config, role,
search=Search(...))`): instead of one run at the config's learning rate, the
runner trains trials whose base learning rates follow the rule `lbt.limit`
uses (`lbt.studies.search_rules.next_learning_rates`), scored by their final
validation accuracy: powers of two around a guess, extended until the best is
bracketed, then refined once to √2 steps around it. Scores closer than the
validation split's standard error are ties. The cell's result is the final
test accuracy of the same run as its validation-best trial: the test set
reports, it never chooses.

The guess is the best base learning rate of the neighbouring cell (`anchor`:
the previous batch of a sweep, the previous rung of a ladder) when that cell
ran the same optimizer under the same scaling rule, so that the grid follows
the optimum where the rule alone would overshoot it; otherwise the config's
own learning rate.

Nothing here lists a directory or reads a name: the planner replays each
cell's search from its first proposal, looking up each proposed trial by the
name it generates, so a killed, resumed or sharded search takes the same
path and ends with the same choice.
"""

import dataclasses
import math
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import ml_collections

from lbt.studies import search_rules

# The validation accuracy of a finished trial; None while it has not finished.
Outcome = Optional[search_rules.Trial]
MIN_TIE = 1e-4  # a tie tolerance for degenerate accuracies (0 or 1)


@dataclasses.dataclass(frozen=True)
class Search:
  """How one cell's learning rate is searched.

  Attributes:
    anchor: the label of the cell whose best learning rate is this cell's
      guess (None: the config's own learning rate).
    max_trials: the most trials the cell may take.
    refine: after bracketing on the 2x grid, try the √2 steps around the best.
    seeds: once chosen, the best learning rate is rerun with these seeds (the
      chosen trial is seed 0 of the config): the seed-to-seed spread.
    trials: where the rule ends with fewer trials than this, more √2 steps
      around the best are run until it has this many, so that cells compared
      with each other had the same number of trials where the search allows
      (0: none added).
  """
  anchor: Optional[str] = None
  max_trials: int = 8
  refine: bool = True
  seeds: Tuple[int, ...] = ()
  trials: int = 0

  def __post_init__(self):
    if not isinstance(self.max_trials, int) or self.max_trials < 3:
      raise ValueError(f"max_trials must be an int >= 3, got {self.max_trials!r}")


@dataclasses.dataclass(frozen=True)
class Cell:
  """A searched cell: its label (trials are `<label>-lr<x>`), its config, its
  role (what the report compares) and its search."""
  label: str
  config: ml_collections.ConfigDict
  role: dict
  search: Search


@dataclasses.dataclass(frozen=True)
class Choice:
  """Where a cell's search ended: its finished trials, the validation-best
  one, whether the best is bracketed (and why not), and the tie tolerance."""
  trials: Tuple[search_rules.Trial, ...]
  best: Optional[search_rules.Trial]
  bracket: search_rules.Bracket
  tie: float


def choose(trials: Sequence[search_rules.Trial], validation_examples: int) -> Choice:
  """The one choice rule, for the runner and the report alike."""
  tie = _tie(validation_examples, trials)
  return Choice(tuple(trials), search_rules.best_trial(trials, tie=tie),
                search_rules.bracket(trials, tie=tie), tie)


def standard_error(accuracy: float, examples: int) -> float:
  """The binomial standard error of an accuracy measured on `examples`:
  differences below it are ties (about 0.3 points at 90 % on 10,000)."""
  if examples <= 0:
    raise ValueError(f"a searched cell needs a validation split, got {examples} examples")
  p = min(max(accuracy, 0.0), 1.0)
  return max(math.sqrt(p * (1 - p) / examples), MIN_TIE)


def trial_name(label: str, learning_rate: float) -> str:
  return f"{label}-lr{learning_rate:.6g}"


def seed_name(label: str, seed: int) -> str:
  return f"{label}-seed{seed}"


@dataclasses.dataclass(frozen=True)
class Planned:
  """A trial to run: a search's learning rate, or a seed of the chosen one."""
  name: str
  cell: Cell
  learning_rate: float
  seed: Optional[int] = None

  def point(self) -> Tuple[ml_collections.ConfigDict, dict]:
    """Its config and role: the cell's, at this learning rate (and seed). A
    seed's rerun is a cell of its own (`<cell>/seed<k>`, section "seed")."""
    config = ml_collections.ConfigDict(self.cell.config.to_dict())
    config.optimizer.learning_rate = float(self.learning_rate)
    role = {**self.cell.role, "learning_rate": float(self.learning_rate)}
    if self.seed is not None:
      config.seed = int(self.seed)
      keep = ("optimizer", "batch", "learning_rate")
      role = {"section": "seed", "cell": f"{role['cell']}/seed{self.seed}",
              "of": role["cell"], "seed": int(self.seed), **{k: role[k] for k in keep}}
    return config, role


def _compatible(a: ml_collections.ConfigDict, b: ml_collections.ConfigDict) -> bool:
  """Whether a base learning rate means the same thing in both configs."""
  keys = ("name", "scaling", "base_batch_size")
  return all(a.optimizer.get(k) == b.optimizer.get(k) for k in keys)


def guess(cell: Cell, anchor: Optional[Tuple[Cell, Choice]]) -> float:
  """The base learning rate the cell's grid is centred on."""
  if anchor is not None and anchor[1].best is not None and _compatible(anchor[0].config,
                                                                       cell.config):
    return anchor[1].best.learning_rate
  return float(cell.config.optimizer.learning_rate)


def _tie(validation_examples: int, trials: Sequence[search_rules.Trial]) -> float:
  scores = [t.score for t in trials if t.score is not None]
  return standard_error(max(scores) if scores else 0.5, validation_examples)


def _examples(cell: Cell) -> int:
  return cell.config.dataset.get("validation_examples", 0)


def replay(cell: Cell, centre: float, outcome: Callable[[str], Outcome]
           ) -> Tuple[List[search_rules.Trial], List[float]]:
  """The cell's search replayed from its first proposal: the finished trials
  in order, and the learning rates still to run ([] when the search ended)."""
  trials: List[search_rules.Trial] = []
  while True:
    proposed = search_rules.next_learning_rates(
        trials, centre, max_trials=cell.search.max_trials,
        tie=_tie(_examples(cell), trials),
        refine=cell.search.refine)
    if not proposed:
      proposed = _fill(trials, min(cell.search.trials, cell.search.max_trials),
                       _tie(_examples(cell), trials))
    if not proposed:
      return trials, []
    results = [(lr, outcome(trial_name(cell.label, lr))) for lr in proposed]
    pending = [lr for lr, result in results if result is None]
    if pending:
      return trials, pending
    trials.extend(result for _, result in results)


def _fill(trials: Sequence[search_rules.Trial], wanted: int, tie: float) -> List[float]:
  """The next √2 step around the best not yet tried, nearest first and below
  first, never at or above a divergence above the best; [] once the cell has
  `wanted` trials or no such step is left within three doublings."""
  best = search_rules.best_trial(trials, tie=tie)
  if best is None or len(trials) >= wanted:
    return []
  ceiling = min((t.learning_rate for t in trials if t.status == search_rules.DIVERGED
                 and t.learning_rate > best.learning_rate), default=math.inf)
  for k in (-1, 1, -2, 2, -3, 3, -4, 4, -5, 5, -6, 6):
    lr = best.learning_rate * math.sqrt(2) ** k
    if lr < ceiling * (1 - 1e-9) and not any(
        math.isclose(lr, t.learning_rate, rel_tol=1e-6) for t in trials):
      return [lr]
  return []


def plan(cells: Sequence[Cell], outcome: Callable[[str], Outcome]
         ) -> Tuple[Dict[str, Choice], List[Planned]]:
  """Every cell's state: the choices of the cells whose search ended, and the
  trials to run next for every cell whose anchor has ended (cells in study
  order, so a chain of anchors resolves), seeds of chosen cells included."""
  labels = {c.label for c in cells}
  for cell in cells:
    if cell.search.anchor is not None and cell.search.anchor not in labels:
      raise ValueError(f"cell {cell.label}: anchor {cell.search.anchor} is not a searched "
                       "cell of the study")
  by_label = {c.label: c for c in cells}
  chosen: Dict[str, Choice] = {}
  wave: List[Planned] = []
  progress = True
  while progress:  # Anchors may come later in the order: sweep until stable.
    progress = False
    for cell in cells:
      if cell.label in chosen or any(p.cell is cell for p in wave):
        continue
      anchor = cell.search.anchor
      if anchor is not None and anchor not in chosen:
        continue
      centre = guess(cell, (by_label[anchor], chosen[anchor]) if anchor else None)
      trials, pending = replay(cell, centre, outcome)
      if pending:
        wave.extend(Planned(trial_name(cell.label, lr), cell, lr) for lr in pending)
      else:
        chosen[cell.label] = choose(trials, _examples(cell))
        wave.extend(_seeds(cell, chosen[cell.label], outcome))
      progress = True
  return chosen, wave


def _seeds(cell: Cell, choice: Choice, outcome: Callable[[str], Outcome]) -> List[Planned]:
  """The seed reruns of a chosen cell that have not finished."""
  if choice.best is None:
    return []
  return [Planned(seed_name(cell.label, s), cell, choice.best.learning_rate, s)
          for s in cell.search.seeds if outcome(seed_name(cell.label, s)) is None]


def outcome_of(status: str, validation_accuracy: Optional[float], learning_rate: float,
               finished: Sequence[str], diverged: Sequence[str]) -> Outcome:
  """A trial's result from its workdir's status and final validation accuracy."""
  if status in diverged:
    return search_rules.Trial(learning_rate, search_rules.DIVERGED)
  if status in finished:
    score = validation_accuracy if validation_accuracy is not None and math.isfinite(
        validation_accuracy) else None
    if score is None:
      return search_rules.Trial(learning_rate, search_rules.DIVERGED)
    return search_rules.Trial(learning_rate, search_rules.FINISHED, score)
  return None


def expected_trials(cells: Sequence[Cell]) -> Mapping[str, int]:
  """A cell's trials before it runs, for the ETA: the three first, one
  extension and, when refining, the two √2 steps, within its cap."""
  return {c.label: min(c.search.max_trials, max(4 + 2 * c.search.refine, c.search.trials))
          for c in cells}
