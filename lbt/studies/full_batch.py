"""The full-batch study's answer, from its point workdirs: `layout.FULL_BATCH`.

A full-batch study (configs/studies/fashion_mnist_full_batch.py) has two
searched cells in section "full_batch": the full batch (its batch is every
training example left after the validation hold-out, facts.json's
train_examples) and a small-batch reference (any smaller batch). For each,
`summarize` takes the runner's choice of its learning-rate search
(DIR/choices/<cell>.json: the validation chose, the test set never does) and
its chosen runs (seed 0, then the other seeds), and says:

- each arm's test accuracy, updates, examples and wall time, the learning
  rate chosen and whether the search bracketed it, the seed-to-seed range;
- the gap (small minus full, in points, seed 0's);
- the cost: the full batch's updates and examples against the small batch's.

Whether the gap closes is decided by the report, by its one rule for every
comparison (the arms' seed intervals).

Written by the runner when the study's work is done (`FullBatchSummary`,
the last planner of a study with full-batch cells), rebuilt whole from the
workdirs; a report only reads it.
"""

import json
import os
from typing import Dict, List, Optional, Sequence

from lbt.errors import ConfigError
from lbt.io import files, layout
from lbt.studies import results, runner

SECTION = "full_batch"
ARMS = ("small", "full")


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


def _arm(cell: str, choice: Optional[dict], rows: Dict[str, dict], trials: List[dict],
         records: Dict[str, list]) -> dict:
  """One arm: its search's choice (the runner's, as written), its chosen runs
  (seed 0, then the other seeds), its recipe and cost."""
  runs = [rows[n] for n in (choice or {}).get("chosen_runs", []) if n in rows]
  best, seeds = (runs[0], runs[1:]) if runs else (None, [])
  accuracies = [r["final_accuracy"] for r in runs
                if r["status"] == results.FINISHED and r["final_accuracy"] is not None]
  first = trials[0]
  curve = [r for r in records.get(best["name"], []) if r.get("kind") == "eval"] if best else []
  spent = trials + [r for r in seeds if r not in trials]
  return {
      "cell": cell, "optimizer": first["optimizer"], "batch": first["batch_size"],
      "validation_examples": first["validation_examples"],
      "chosen": _run(best, curve) if best else None,
      "bracketed": bool(choice and choice["bracketed"]),
      "bracket": (choice or {}).get("reason", "the search has not ended"),
      "trials": [_run(r) for r in trials], "seeds": [_run(r) for r in seeds],
      "seed_range_points": (100 * (max(accuracies) - min(accuracies))
                            if len(accuracies) > 1 else None),
      "search_examples": sum((r["updates"] or 0) * r["batch_size"] for r in spent),
      "search_wall_time_s": sum(r["wall_time_s"] or 0 for r in spent),
      "recipe": _recipe(json.loads(first["config_json"]))}


def read_choice(workdir: str, cell: str) -> Optional[dict]:
  """The runner's choice for a cell (DIR/choices/<cell>.json), or None."""
  try:
    return json.loads(files.read_text(os.path.join(workdir, layout.choice_file(cell)))
                      or "null")
  except ValueError:
    return None


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
  by_name = {row["name"]: row for row in rows}
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
    arms[arm] = {**_arm(cell, read_choice(workdir, cell), by_name, trials, records or {}),
                 "train_examples": train_examples}
  return {"arms": arms, **verdict(arms)}


def verdict(arms: Dict[str, dict]) -> dict:
  """The gap (small minus full, points, seed 0's) and the full batch's cost
  against the small batch's; None where an arm has no finished choice yet.
  Whether the gap closes is the report's one rule (the arms' seed
  intervals, `lbt.reports.compare`), not decided here."""
  small, full = ((arms.get(a) or {}).get("chosen") for a in ARMS)
  done = [run is not None and run["test_accuracy"] is not None for run in (small, full)]
  if not all(done):
    return {"gap_points": None, "updates_ratio": None, "examples_ratio": None}
  return {"gap_points": 100 * (small["test_accuracy"] - full["test_accuracy"]),
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
