"""The planners of a study file's points (`lbt.studies.runner.Planner`):
its plain points, each run once, and its searched cells, whose trials
`lbt.studies.cell_search` plans wave after wave until every cell's learning
rate is chosen. (The steps-to-target protocol's planner is
`lbt.studies.limit_protocol.LimitPlanner`, the full-batch summary's
`lbt.studies.full_batch.FullBatchSummary`.)"""

import json
import os
from typing import Dict, List, Mapping, Sequence

from lbt.engine import config as config_lib
from lbt.io import files, layout, metrics
from lbt.studies import cell_search, directory, results
from lbt.studies import points as points_lib
from lbt.studies.runner import ENDED, Planner, Task, WorkCount


class PlainPoints(Planner):
  """Points run once each, at their own config (no search)."""

  def __init__(self, points: Mapping[str, points_lib.Point], workdir: str):
    self.points, self.directory = dict(points), workdir
    self.examples = {n: planned_examples(p.config) for n, p in self.points.items()}

  def _ended(self) -> List[str]:
    return [n for n in self.points
            if directory.agreed_status(os.path.join(self.directory, n)) in ENDED]

  def plan(self) -> List[Task]:
    ended = set(self._ended())
    return [Task(self.directory, n, p) for n, p in self.points.items() if n not in ended]

  def owns(self, task: Task) -> bool:
    return task.directory == self.directory and task.name in self.points

  def write_decisions(self) -> None:
    """A cell of several plain points at their own learning rates (a grid,
    not a search) gets its choice by the one rule once every point ended."""
    grids: Dict[str, List[str]] = {}
    for name, point in self.points.items():
      if point.role.get("learning_rate") is not None:
        grids.setdefault(point.role["cell"], []).append(name)
    outcome = Outcomes(self.directory)
    for cell, names in grids.items():
      trials = [outcome(n) for n in names]
      if len(names) > 1 and all(t is not None for t in trials):
        examples = config_lib.dataset_field(self.points[names[0]].config,
                                            "validation_examples")
        write_choice(self.directory, cell, cell_search.choose(
            trials, examples, runs=[[n] for n in names]))

  def progress(self) -> WorkCount:
    ended = set(self._ended())
    left = sum(x for n, x in self.examples.items() if n not in ended)
    return WorkCount(len(ended), len(self.points), left)


class Outcomes:
  """Each trial's result read from its workdir: the one adapter from a
  study's trial to a search trial; a finished trial's result never changes,
  so it is read once."""

  def __init__(self, workdir: str):
    self.workdir, self.known = workdir, {}

  def __call__(self, name: str) -> cell_search.Outcome:
    if name in self.known:
      return self.known[name]
    point_dir = os.path.join(self.workdir, name)
    if not files.exists(os.path.join(point_dir, layout.CONFIG)):
      return None
    status = results.point_status(point_dir)
    if status not in ENDED:
      return None
    point = results.load_point(self.workdir, name)
    summary = point.last("summary")
    outcome = cell_search.outcome_of(
        status, summary.get("validation_accuracy"),
        point.config["optimizer"]["learning_rate"],
        finished=(results.FINISHED,), diverged=(results.DIVERGED,))
    self.known[name] = outcome
    return outcome


class SearchedCells(Planner):
  """The searched cells of a study (a Point with a search): each wave holds
  the next trials of every cell whose anchor has ended; a cell's choice is
  written to DIR/choices/<cell>.json when its search ends."""

  def __init__(self, cells: Sequence[cell_search.Cell], workdir: str):
    self.cells, self.directory = list(cells), workdir
    self.outcome = Outcomes(workdir)
    self.chosen: Dict[str, cell_search.Choice] = {}

  def plan(self) -> List[Task]:
    self.chosen, wave = cell_search.plan(self.cells, self.outcome)
    return [Task(self.directory, p.name, points_lib.Point(*p.point())) for p in wave]

  def owns(self, task: Task) -> bool:
    """A trial of one of its cells, or a seed rerun of one."""
    role = task.point.role
    return task.directory == self.directory and (
        role.get("of", role.get("cell")) in {c.label for c in self.cells})

  def progress(self) -> WorkCount:
    chosen, wave = cell_search.plan(self.cells, self.outcome)
    ended = list(self.outcome.known)
    left = cell_search.runs_left(self.cells, chosen, wave, ended)
    examples = sum(left[c.label] * c.updates * c.config.batch_size for c in self.cells)
    return WorkCount(len(ended), len(ended) + sum(left.values()), examples)

  def ended(self, task: Task) -> None:
    write_hparams(self.directory, task.name, task.point.role)

  def write_decisions(self) -> None:
    for label, choice in self.chosen.items():
      write_choice(self.directory, label, choice)


def planned_examples(config) -> float:
  """The training examples a run of `config` plans (its updates times its batch)."""
  facts = config_lib.validate(config, num_devices=1)
  return float(facts.num_train_steps * facts.batch_size)


def write_choice(workdir: str, cell: str, choice: cell_search.Choice) -> None:
  """DIR/choices/<cell>.json, written whole when it changed."""
  path = os.path.join(workdir, layout.choice_file(cell))
  text = json.dumps({"cell": cell, **choice.to_record()}, indent=2, sort_keys=True)
  if files.read_text(path) != text:
    files.makedirs(os.path.dirname(path))
    files.write_text_atomic(path, text)


def write_hparams(workdir: str, name: str, role: dict) -> None:
  """The trial's learning rates, cell and scores for TensorBoard's HParams
  dashboard (written again, whole, when a rerun finds it missing)."""
  point_dir = os.path.join(workdir, name)
  if files.exists(os.path.join(point_dir, layout.TENSORBOARD, layout.HPARAMS)):
    return
  point = results.load_point(workdir, name)
  summary = point.last("summary")
  if not summary:
    return
  hparams = {k: v for k, v in role.items() if k != "section"}
  hparams["effective_learning_rate"] = summary.get("effective_learning_rate")
  metrics.write_hparams(point_dir, hparams, {
      "validation_accuracy": summary.get("validation_accuracy"),
      "test_accuracy": summary.get("eval_accuracy")})


def study_planners(points: Mapping[str, points_lib.Point], workdir: str,
                   facts: Mapping[str, config_lib.RunFacts]) -> List[Planner]:
  """The planners of a study file's selected points, plain then searched."""
  cells = [cell_search.Cell(name, p.config, dict(p.role), p.search,
                            updates=facts[name].num_train_steps)
           for name, p in points.items() if p.search is not None]
  plain = {n: p for n, p in points.items() if p.search is None}
  return [PlainPoints(plain, workdir), SearchedCells(cells, workdir)]
