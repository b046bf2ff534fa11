"""The full-batch study's answer, from its point workdirs: `layout.FULL_BATCH`.

A full-batch study (configs/studies/fashion_mnist_full_batch.py) has two
searched cells in section "full_batch": the full batch (its batch is every
training example left after the validation hold-out, facts.json's
train_examples) and a small-batch reference (any smaller batch). For each,
`summarize` takes the validation-best trial of its learning-rate search (the
one choice rule, `cell_search.choose`; the test set never chooses) and its
seed reruns (section "seed", `of` the cell), and says:

- each arm's test accuracy, updates, examples and wall time, the learning
  rate chosen and whether the search bracketed it, the seed-to-seed range;
- the gap (small minus full, in points) and whether it is closed: at most
  the larger of GAP_POINTS and the arms' seed ranges;
- the cost: the full batch's updates and examples against the small batch's.

Written by the runner when the study's work is done (`FullBatchSummary`,
the last planner of a study with full-batch cells), rebuilt whole from the
workdirs; a report only reads it.
"""

import json
import os
from typing import Dict, List, Optional, Sequence

from lbt.errors import ConfigError
from lbt.io import files, layout
from lbt.studies import cell_search, results, runner, search_rules
from lbt.studies import points as points_lib

SECTION = "full_batch"
GAP_POINTS = 0.5  # a gap at most this (or the seed range) is closed
ARMS = ("small", "full")


def _trial(row: dict) -> Optional[search_rules.Trial]:
  """A row as a search trial scored by its final validation accuracy; None
  while it has not ended."""
  return cell_search.outcome_of(row["status"], row["validation_accuracy"],
                                row["base_learning_rate"], finished=(results.FINISHED,),
                                diverged=(results.DIVERGED,))


def _run(row: dict, curve: Sequence[dict] = ()) -> dict:
  """What the summary keeps of one run."""
  examples = (row["updates"] or 0) * row["batch_size"]
  return {"name": row["name"], "status": row["status"], "seed": row.get("seed") or 0,
          "learning_rate": row["base_learning_rate"],
          "validation_accuracy": row["validation_accuracy"],
          "test_accuracy": row["final_accuracy"], "updates": row["updates"],
          "examples": examples, "epochs": row["epochs"], "wall_time_s": row["wall_time_s"],
          "curve": [[r["step"], r["accuracy"]] for r in curve]}


def _recipe(config: dict) -> dict:
  """The fields of a run that make it Geiping et al.'s recipe or not."""
  optimizer, loss = config["optimizer"], config["loss"]
  return {"optimizer": optimizer["name"], "momentum": optimizer.get("momentum"),
          "weight_decay": optimizer.get("weight_decay"),
          "clip_norm": optimizer.get("clip_norm", 0.0),
          "gradient_penalty": loss.get("gradient_penalty"),
          "ghost_size": config["bn"].get("ghost_size", 0),
          "shuffle": config["dataset"].get("shuffle", True),
          "schedule": config["schedule"], "microbatch_size": config["microbatch_size"]}


def _arm(cell: str, trials: List[dict], seeds: List[dict],
         records: Dict[str, list]) -> dict:
  """One arm: its search's choice, its seeds' range, its recipe and cost."""
  validation = trials[0]["validation_examples"]
  choice = cell_search.choose([t for t in map(_trial, trials) if t is not None], validation)
  best = None
  if choice.best is not None:
    rate = choice.best.learning_rate
    best = next((r for r in trials if r["status"] == results.FINISHED and abs(
        r["base_learning_rate"] - rate) <= search_rules.LR_RTOL * rate), None)
  runs = [best] + seeds if best is not None else []
  accuracies = [r["final_accuracy"] for r in runs
                if r["status"] == results.FINISHED and r["final_accuracy"] is not None]
  first = trials[0]
  curve = [r for r in records.get(best["name"], []) if r.get("kind") == "eval"] if best else []
  return {
      "cell": cell, "optimizer": first["optimizer"], "batch": first["batch_size"],
      "validation_examples": validation, "chosen": _run(best, curve) if best else None,
      "bracketed": choice.bracket.bracketed, "bracket": choice.bracket.reason,
      "trials": [_run(r) for r in trials], "seeds": [_run(r) for r in seeds],
      "seed_range_points": (100 * (max(accuracies) - min(accuracies))
                            if len(accuracies) > 1 else None),
      "search_examples": sum((r["updates"] or 0) * r["batch_size"] for r in trials + seeds),
      "search_wall_time_s": sum(r["wall_time_s"] or 0 for r in trials + seeds),
      "recipe": _recipe(json.loads(first["config_json"]))}


def summarize(workdir: str, rows: Sequence[dict],
              records: Optional[Dict[str, list]] = None) -> Optional[dict]:
  """The study's answer from its rows (results.sqlite's); None when the
  directory holds no full-batch cell."""
  cells: Dict[str, List[dict]] = {}
  for row in rows:
    if row["section"] == SECTION:
      cells.setdefault(row["cell"], []).append(row)
  if not cells:
    return None
  seeds: Dict[str, List[dict]] = {}
  for row in rows:
    if row["section"] == "seed":
      of = points_lib.read_role(os.path.join(workdir, row["name"]), row["name"]).get("of")
      seeds.setdefault(of, []).append(row)
  arms = {}
  largest = max(trials[0]["batch_size"] for trials in cells.values())
  for cell, trials in cells.items():
    facts = results.facts_of(results.load_point(workdir, trials[0]["name"]))
    # A workdir from before facts.json kept train_examples: the larger batch.
    train_examples = facts.get("train_examples", largest)
    arm = "full" if trials[0]["batch_size"] == train_examples else "small"
    if arm in arms:
      raise ConfigError(f"{workdir}: cells of section {SECTION!r}", sorted(cells),
                        "one full-batch cell and one small-batch cell (another "
                        "number of updates goes in a directory of its own)")
    arms[arm] = {**_arm(cell, trials, seeds.get(cell, []), records or {}),
                 "train_examples": train_examples}
  return {"arms": arms, **verdict(arms)}


def verdict(arms: Dict[str, dict]) -> dict:
  """The gap (small minus full, points), its tolerance, whether it is
  closed, and the full batch's cost against the small batch's; None where
  an arm has no finished choice yet."""
  small, full = ((arms.get(a) or {}).get("chosen") for a in ARMS)
  done = [run is not None and run["test_accuracy"] is not None for run in (small, full)]
  if not all(done):
    return {"gap_points": None, "tolerance_points": None, "closed": None,
            "updates_ratio": None, "examples_ratio": None}
  gap = 100 * (small["test_accuracy"] - full["test_accuracy"])
  ranges = [arms[a]["seed_range_points"] for a in ARMS
            if arms[a]["seed_range_points"] is not None]
  tolerance = max([GAP_POINTS] + ranges)
  return {"gap_points": gap, "tolerance_points": tolerance, "closed": gap <= tolerance,
          "updates_ratio": full["updates"] / small["updates"],
          "examples_ratio": full["examples"] / small["examples"]}


def write(workdir: str, summary: dict) -> str:
  """Writes the summary as DIR/full_batch.json (whole); returns its path."""
  path = os.path.join(workdir, layout.FULL_BATCH)
  files.write_text_atomic(path, json.dumps(summary, indent=2, sort_keys=True))
  return path


def read(path: str) -> Optional[dict]:
  """A summary file, or None when it is missing or not a summary."""
  text = files.read_text(path)
  try:
    summary = None if text is None else json.loads(text)
  except ValueError:
    return None
  return summary if isinstance(summary, dict) and "arms" in summary else None



class FullBatchSummary(runner.Planner):
  """The full-batch study's last step: full_batch.json, once every search
  of its cells has ended (it plans no trial of its own)."""

  def __init__(self, workdir: str):
    self.directory = workdir

  def plan(self) -> List[runner.Task]:
    return []

  def owns(self, task: runner.Task) -> bool:
    return False

  def finish(self) -> None:
    rows, points = results.load_study(self.directory)
    summary = summarize(self.directory, rows, {n: p.records for n, p in points.items()})
    if summary is not None:
      write(self.directory, summary)
