"""The learning rate of a study's cell, searched on the validation split.

A study file marks a cell as searched (`points.Point(config, role,
search=Search(...))`): instead of one run at the config's learning rate, the
runner trains trials whose base learning rates follow the rule `lbt.limit`
uses (`lbt.studies.search_rules.next_learning_rates`), scored by their final
validation accuracy: powers of two around a guess, extended until the best is
bracketed and the grid reaches two doublings past it on each side, then
refined to √2 steps around it. Where a cell trains few updates (at most
FEW_UPDATES), each learning rate runs `seeds_per_rate` seeds and scores the
mean of their validation accuracies, so that the choice is not made on one
seed's noise. Scores closer than the tie (`search_rules.tie_tolerance`: the
measured seed noise, at least the validation split's binomial standard
error) are ties, resolved to the middle of the tied range. Every cell ends
with at least `runs` runs at its chosen learning rate. The cell's result is
the final test accuracy of the runs at its validation-best learning rate:
the test set reports, it never chooses.

The guess is the best base learning rate of the neighbouring cell (`anchor`:
the previous batch of a sweep, the previous rung of a ladder) when that cell
ran the same optimizer under the same scaling rule, so that the grid follows
the optimum where the rule alone would overshoot it; otherwise the config's
own learning rate.

Nothing here lists a directory or reads a name: the planner replays each
cell's search from its first proposal, looking up each proposed trial by the
name it generates from (label, learning rate, seed), so a killed, resumed or
sharded search takes the same path and ends with the same choice
(`Choice.to_record` is what the runner writes beside the cell's trials).
"""

import dataclasses
import math
import re
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import ml_collections

from lbt.engine import config as config_lib
from lbt.errors import ConfigError
from lbt.studies import search_rules

# A finished trial's result; None while it has not finished.
Outcome = Optional[search_rules.Trial]


# A cell of at most this many updates scores each learning rate over seeds.
FEW_UPDATES = 20


@dataclasses.dataclass(frozen=True)
class Search:
  """How one cell's learning rate is searched.

  Attributes:
    anchor: the label of the cell whose best learning rate is this cell's
      guess (None: the config's own learning rate).
    max_trials: the most learning rates the cell may try.
    refine: once bracketed, try the √2 steps around the best.
    seeds: seeds the chosen learning rate also runs, besides the first
      `runs` (seed k sets the config's seed plus k).
    trials: where the rule ends with fewer learning rates than this, more √2
      steps around the best are run until it has this many, so that cells
      compared with each other had the same number of trials where the
      search allows (0: none added).
    runs: the runs at the chosen learning rate the cell ends with (seeds 0
      to runs - 1, reusing the search's own).
    seeds_per_rate: where the cell trains at most FEW_UPDATES updates, the
      seeds each learning rate runs during the search (its score: their
      mean validation accuracy); elsewhere one.
  """
  anchor: Optional[str] = None
  max_trials: int = 8
  refine: bool = True
  seeds: Tuple[int, ...] = ()
  trials: int = 0
  runs: int = 3
  seeds_per_rate: int = 3

  def __post_init__(self):
    counts = {"max_trials": (self.max_trials, 3), "trials": (self.trials, 0),
              "runs": (self.runs, 1), "seeds_per_rate": (self.seeds_per_rate, 1)}
    for field, (value, least) in counts.items():
      if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ConfigError(f"Search.{field}", value, f"an int >= {least}")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds):
      raise ConfigError("Search.seeds", self.seeds, "a tuple of ints >= 0")


@dataclasses.dataclass(frozen=True)
class Cell:
  """A searched cell: its label (trials are `<label>-lr<x>[-seed<k>]`), its
  config, its role (what the report compares), its search, and the updates
  each of its runs trains (RunFacts.num_train_steps of its config, derived
  when not given)."""
  label: str
  config: ml_collections.ConfigDict
  role: dict
  search: Search
  updates: Optional[int] = None

  def __post_init__(self):
    if self.updates is None:
      facts = config_lib.validate(self.config, num_devices=1)
      object.__setattr__(self, "updates", facts.num_train_steps)

  @property
  def seeds_per_rate(self) -> int:
    """The seeds each learning rate of the search runs."""
    return self.search.seeds_per_rate if self.updates <= FEW_UPDATES else 1


@dataclasses.dataclass(frozen=True)
class Choice:
  """Where a cell's search ended.

  Attributes:
    trials: one per learning rate tried, in the order proposed (a score is
      the mean over the rate's seeds, `seed_scores` keeps each).
    best: the chosen trial (`search_rules.best_trial`), None if none scored.
    bracket: whether the best is bracketed, its tied range, how far the grid
      reaches past it (`search_rules.bracket`).
    tie: the tie tolerance the choice used (`search_rules.tie_tolerance`).
    capped: the trial cap stopped the search before its rule ended.
    runs: per trial, the names of its runs, seed 0 first (empty when the
      chooser had no names).
    chosen_runs: the names of the runs at the chosen learning rate, seed 0
      first: the search's own, then the cell's seed reruns.
  """
  trials: Tuple[search_rules.Trial, ...]
  best: Optional[search_rules.Trial]
  bracket: search_rules.Bracket
  tie: float
  capped: bool = False
  runs: Tuple[Tuple[str, ...], ...] = ()
  chosen_runs: Tuple[str, ...] = ()

  @property
  def learning_rate(self) -> Optional[float]:
    return None if self.best is None else self.best.learning_rate

  @property
  def reason(self) -> str:
    """Bracketed or why not, how far the grid reaches past the best, and the
    cap where it stopped the search."""
    words = self.bracket.reason
    if self.best is not None:
      words += f"; grid past the best: {self.bracket.coverage}"
    if self.capped and search_rules.CAPPED not in words:
      words += f"; {search_rules.CAPPED}"
    return words

  def to_record(self) -> dict:
    """The choice as JSON values (what the runner writes beside the cell's
    trials and the report reads)."""
    runs = self.runs or tuple(() for _ in self.trials)
    return {
        "learning_rate": self.learning_rate, "tied_low": self.bracket.tied_low,
        "tied_high": self.bracket.tied_high, "bracketed": self.bracket.bracketed,
        "reason": self.reason, "bracket_reason": self.bracket.reason,
        "bracket_low": self.bracket.low, "bracket_high": self.bracket.high,
        "coverage": self.bracket.coverage, "capped": self.capped, "tie": self.tie,
        "trials": [{"learning_rate": t.learning_rate, "status": t.status, "score": t.score,
                    "seed_scores": list(t.seed_scores), "runs": list(names)}
                   for t, names in zip(self.trials, runs)],
        "chosen_runs": list(self.chosen_runs)}

  @classmethod
  def from_record(cls, record: dict) -> "Choice":
    """The choice `to_record` wrote."""
    trials = tuple(search_rules.Trial(t["learning_rate"], t["status"], t["score"],
                                      tuple(t["seed_scores"])) for t in record["trials"])
    best = next((t for t in trials if t.learning_rate == record["learning_rate"]), None)
    bracket = search_rules.Bracket(
        record["bracketed"], record["bracket_reason"], record["bracket_low"],
        record["bracket_high"], record["tied_low"], record["tied_high"], record["coverage"])
    return cls(trials, best, bracket, record["tie"], record["capped"],
               tuple(tuple(t["runs"]) for t in record["trials"]),
               tuple(record["chosen_runs"]))


def choose(trials: Sequence[search_rules.Trial], validation_examples: int, *,
           max_trials: Optional[int] = None, capped: bool = False,
           runs: Sequence[Sequence[str]] = ()) -> Choice:
  """The one choice rule, for the runner and the report alike: the best
  trial within the tie (`search_rules.tie_tolerance` on these trials) and
  its bracket; with runs (each trial's run names), the chosen runs."""
  tie = search_rules.tie_tolerance(trials, validation_examples)
  best = search_rules.best_trial(trials, tie=tie)
  runs = tuple(tuple(r) for r in runs) or tuple(() for _ in trials)
  chosen = runs[list(trials).index(best)] if best is not None else ()
  return Choice(tuple(trials), best, search_rules.bracket(trials, tie, max_trials=max_trials),
                tie, capped, runs, chosen)


def trial_name(label: str, learning_rate: float, seed: int = 0) -> str:
  """A search trial's name: seed 0 is `<label>-lr<x>`, seed k `<label>-lr<x>-seed<k>`."""
  return f"{label}-lr{learning_rate:.6g}" + (f"-seed{seed}" if seed else "")


def seed_name(label: str, seed: int) -> str:
  """A seed rerun of the chosen learning rate."""
  return f"{label}-seed{seed}"


@dataclasses.dataclass(frozen=True)
class Planned:
  """A trial to run: one seed of a search's learning rate, or (rerun) a seed
  rerun of the chosen one."""
  name: str
  cell: Cell
  learning_rate: float
  seed: int = 0
  rerun: bool = False

  def point(self) -> Tuple[ml_collections.ConfigDict, dict]:
    """Its config and role: the cell's, at this learning rate, with the
    config's seed plus `seed` (a search trial's role says its seed when it is
    not 0). A seed's rerun is a cell of its own (`<cell>/seed<k>`, section
    "seed")."""
    config = ml_collections.ConfigDict(self.cell.config.to_dict())
    config.optimizer.learning_rate = float(self.learning_rate)
    config.seed = int(config.get("seed", 0)) + int(self.seed)
    role = {**self.cell.role, "learning_rate": float(self.learning_rate)}
    if self.rerun:
      keep = ("optimizer", "batch", "learning_rate")
      role = {"section": "seed", "cell": f"{role['cell']}/seed{self.seed}",
              "of": role["cell"], "seed": int(self.seed), **{k: role[k] for k in keep}}
    elif self.seed:
      role["seed"] = int(self.seed)
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


def _examples(cell: Cell) -> int:
  return config_lib.dataset_field(cell.config, "validation_examples")


def _pooled(learning_rate: float, outcomes: Sequence[search_rules.Trial]) -> search_rules.Trial:
  """One learning rate's trial from its seeds' outcomes: diverged if any seed
  diverged (a rate one seed cannot train is not chosen), unscored if any is,
  else scored by the mean (each seed's score kept when there are several)."""
  if any(not o.finished for o in outcomes):
    return search_rules.Trial(learning_rate, search_rules.DIVERGED)
  scores = [o.score for o in outcomes]
  if any(s is None for s in scores):
    return search_rules.Trial(learning_rate, search_rules.FINISHED)
  return search_rules.Trial(learning_rate, search_rules.FINISHED, sum(scores) / len(scores),
                            tuple(scores) if len(scores) > 1 else ())


@dataclasses.dataclass(frozen=True)
class _Replayed:
  """A search replayed: its trials and their runs so far, the runs still to
  do (none when it ended), and whether the cap ended it."""
  trials: Tuple[search_rules.Trial, ...]
  runs: Tuple[Tuple[str, ...], ...]
  pending: Tuple[Planned, ...]
  capped: bool


def _next(cell: Cell, centre: float, trials: Sequence[search_rules.Trial],
          max_trials: int) -> List[float]:
  return search_rules.next_learning_rates(
      trials, centre, max_trials=max_trials,
      tie=search_rules.tie_tolerance(trials, _examples(cell)), refine=cell.search.refine,
      min_trials=min(cell.search.trials, cell.search.max_trials))


def _replay(cell: Cell, centre: float, outcome: Callable[[str], Outcome]) -> _Replayed:
  """The cell's search replayed from its first proposal."""
  trials, runs = [], []
  while True:
    proposed = _next(cell, centre, trials, cell.search.max_trials)
    if not proposed:
      capped = len(trials) >= cell.search.max_trials and bool(
          _next(cell, centre, trials, len(trials) + 3))
      return _Replayed(tuple(trials), tuple(runs), (), capped)
    planned = [Planned(trial_name(cell.label, lr, s), cell, lr, s)
               for lr in proposed for s in range(cell.seeds_per_rate)]
    results = {p.name: outcome(p.name) for p in planned}
    pending = tuple(p for p in planned if results[p.name] is None)
    if pending:
      return _Replayed(tuple(trials), tuple(runs), pending, False)
    for lr in proposed:
      names = tuple(p.name for p in planned if p.learning_rate == lr)
      trials.append(_pooled(lr, [results[n] for n in names]))
      runs.append(names)


def _rerun_seeds(cell: Cell, seeds_run: int) -> List[int]:
  """The seeds the chosen learning rate reruns, when the search ran it with
  `seeds_run` seeds (0 to seeds_run - 1): up to `runs`, and `seeds`."""
  return sorted((set(range(cell.search.runs)) | set(cell.search.seeds)) - set(range(seeds_run)))


def _choice(cell: Cell, state: _Replayed) -> Choice:
  choice = choose(state.trials, _examples(cell), max_trials=cell.search.max_trials,
                  capped=state.capped, runs=state.runs)
  if choice.best is None:
    return choice
  reruns = _rerun_seeds(cell, len(choice.chosen_runs))
  return dataclasses.replace(choice, chosen_runs=choice.chosen_runs + tuple(
      seed_name(cell.label, s) for s in reruns))


def plan(cells: Sequence[Cell], outcome: Callable[[str], Outcome]
         ) -> Tuple[Dict[str, Choice], List[Planned]]:
  """Every cell's state: the choices of the cells whose search ended, and the
  trials to run next for every cell whose anchor has ended (cells in study
  order, so a chain of anchors resolves), seed reruns of chosen cells
  included."""
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
      state = _replay(cell, centre, outcome)
      if state.pending:
        wave.extend(state.pending)
      else:
        chosen[cell.label] = _choice(cell, state)
        wave.extend(_reruns(cell, chosen[cell.label], outcome))
      progress = True
  return chosen, wave


def _reruns(cell: Cell, choice: Choice, outcome: Callable[[str], Outcome]) -> List[Planned]:
  """The seed reruns of a chosen cell that have not finished."""
  if choice.best is None:
    return []
  seeds = _rerun_seeds(cell, len(choice.runs[choice.trials.index(choice.best)]))
  return [Planned(seed_name(cell.label, s), cell, choice.best.learning_rate, s, rerun=True)
          for s in seeds if outcome(seed_name(cell.label, s)) is None]


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
  """A cell's runs before it runs, for the ETA: the three first rates, one
  extension, two to reach two doublings past the best and, when refining,
  the two √2 steps, within its cap, each with its seeds per rate; then its
  seed reruns."""
  return {c.label: c.seeds_per_rate * min(c.search.max_trials,
                                          max(6 + 2 * c.search.refine, c.search.trials))
          + len(_rerun_seeds(c, c.seeds_per_rate)) for c in cells}


def is_trial_of(label: str, name: str) -> bool:
  """Whether `name` is one of the cell's runs (`trial_name` or `seed_name` of
  `label`; a cell whose label extends another's is not the other's)."""
  return re.fullmatch(re.escape(label) + r"(-lr[0-9.e+-]+)?(-seed[0-9]+)?", name) is not None \
      and name != label


def runs_left(cells: Sequence[Cell], chosen: Mapping[str, Choice],
              wave: Sequence[Planned], ended: Sequence[str]) -> Dict[str, int]:
  """The runs each cell still expects, for the ETA: a chosen cell's planned
  reruns; another cell's `expected_trials` less its ended runs, and at least
  what it has planned now."""
  expected = expected_trials(cells)
  left = {}
  for cell in cells:
    planned = sum(p.cell is cell for p in wave)
    if cell.label in chosen:
      left[cell.label] = planned
    else:
      done = sum(is_trial_of(cell.label, name) for name in ended)
      left[cell.label] = max(expected[cell.label] - done, planned)
  return left
