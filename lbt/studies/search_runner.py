"""Running a study's searched cells: wave after wave of trials until every
cell's learning rate is chosen (`lbt.studies.cell_search` plans, this module
trains). Each wave holds the next trials of every cell whose anchor has
ended, so shards split it; every trial is an ordinary point workdir whose
role names its cell and learning rate, and whose TensorBoard folder gets the
trial's hyperparameters and scores for the HParams dashboard.
"""

import hashlib
import os
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jax

from lbt.io import files, layout, metrics
from lbt.studies import cell_search, results, runner
from lbt.studies import points as points_lib

WAIT_SECONDS = 2.0  # how often a shard looks for the others' trials (a cheap read)


def cells_of(points: Mapping[str, points_lib.Point]) -> List[cell_search.Cell]:
  """The searched cells of a study, in its order (a Point with a search)."""
  return [cell_search.Cell(name, p.config, dict(p.role), p.search)
          for name, p in points.items() if p.search is not None]


class Outcomes:
  """Each trial's result read from its workdir; a finished trial's result
  never changes, so it is read once."""

  def __init__(self, workdir: str):
    self.workdir, self._known = workdir, {}

  def __call__(self, name: str) -> cell_search.Outcome:
    if name in self._known:
      return self._known[name]
    point_dir = os.path.join(self.workdir, name)
    if not files.exists(os.path.join(point_dir, layout.CONFIG)):
      return None
    status = results.point_status(point_dir)
    if status not in (results.FINISHED, results.DIVERGED):
      return None
    point = results.load_point(self.workdir, name)
    summary = point.last("summary")
    outcome = cell_search.outcome_of(
        status, summary.get("validation_accuracy"),
        point.config["optimizer"]["learning_rate"],
        finished=(results.FINISHED,), diverged=(results.DIVERGED,))
    self._known[name] = outcome
    return outcome


def run_cells(cells: Sequence[cell_search.Cell], workdir: str, *,
              shard: Tuple[int, int] = (0, 1), groups: Sequence = (),
              on_wave: Optional[Callable[[int, int], None]] = None
              ) -> Dict[str, cell_search.Choice]:
  """Runs every cell's search to its end in `workdir` (resuming: finished
  trials are read, an interrupted one resumes); returns label -> choice."""
  if not cells:
    return {}
  is_main = jax.process_index() == 0
  outcome = Outcomes(workdir)
  wave_number, seconds_per_example = 0, None
  while True:
    chosen, wave = cell_search.plan(cells, outcome)
    if not wave:
      return chosen
    wave_number += 1
    points = {p.name: points_lib.Point(*p.point()) for p in wave}
    if on_wave is not None:
      on_wave(len(chosen), len(cells))
    if is_main:
      left = _trials_left(cells, chosen, outcome)
      eta = ("" if seconds_per_example is None else
             f", ETA {_minutes(left * seconds_per_example * _mean_examples(cells))}")
      print(f"lbt.study: search wave {wave_number}: {len(points)} trial(s) of "
            f"{len({p.cell.label for p in wave})} cell(s); {len(chosen)} of {len(cells)} "
            f"cells chosen; about {left} trial(s) left{eta}", flush=True)
    start = time.time()
    examples = run_wave(points, workdir, shard=shard, groups=groups)
    if examples:
      measured = (time.time() - start) / examples
      seconds_per_example = measured if seconds_per_example is None else (
          0.5 * seconds_per_example + 0.5 * measured)
    if is_main:
      for name, point in points.items():
        write_hparams(workdir, name, point.role)


def _trials_left(cells, chosen, outcome) -> int:
  """The ETA's count: each unchosen cell's expected trials less those it ran
  (at least those it still has planned), seeds of chosen cells included."""
  expected = cell_search.expected_trials(cells)
  by_label = {c.label: c for c in cells}
  left = 0
  for cell in cells:
    if cell.label in chosen:
      left += sum(outcome(cell_search.seed_name(cell.label, s)) is None
                  for s in cell.search.seeds)
      continue
    anchor = cell.search.anchor
    if anchor is not None and anchor not in chosen:
      left += expected[cell.label] + len(cell.search.seeds)
      continue
    centre = cell_search.guess(cell, (by_label[anchor], chosen[anchor]) if anchor else None)
    trials, pending = cell_search.replay(cell, centre, outcome)
    left += max(len(pending), expected[cell.label] - len(trials)) + len(cell.search.seeds)
  return left


def _mean_examples(cells) -> float:
  return sum(c.config.num_epochs * (60000 - c.config.dataset.get("validation_examples", 0))
             for c in cells) / len(cells)


def _minutes(seconds: float) -> str:
  return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def owner(name: str, shards: int) -> int:
  """The shard that runs a trial, from its name alone: shards that plan a
  wave at different moments (one still busy with its plain points, or
  rerun after a kill) may see different waves, but never disagree on who
  runs a trial, so every trial a shard waits for is run by its owner."""
  return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % shards


def run_wave(points: Mapping[str, points_lib.Point], workdir: str, *,
             shard: Tuple[int, int] = (0, 1), groups: Sequence = ()) -> int:
  """One wave: every trial validated and its role written, this shard's
  trials run, then it waits for the other shards' trials. A kill anywhere
  needs no record of the wave: the planner replays each search by the names
  it generates, so the rerun plans the same wave again."""
  facts = runner.validate_points(points, workdir)
  if jax.process_index() == 0:
    order = results.study_info(workdir).get("points", [])
    runner.claim_directory(workdir, None, order + [n for n in points if n not in order],
                           None, None)
    runner.write_roles(workdir, points)
  selected = [n for n in points if owner(n, shard[1]) == shard[0]]
  runner.run_selected(points, facts, selected, workdir, jax.process_index() == 0, groups)
  runner.wait_for(workdir, list(points), seconds=WAIT_SECONDS, program="lbt.study")
  return sum(facts[n].examples for n in selected)


def write_hparams(workdir: str, name: str, role: dict) -> None:
  """The trial's learning rates, cell and scores for TensorBoard's HParams
  dashboard (written again, whole, when a rerun finds it missing)."""
  point_dir = os.path.join(workdir, name)
  if files.exists(os.path.join(point_dir, layout.TENSORBOARD, "hparams")):
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
