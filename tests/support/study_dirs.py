"""Study directories written by hand as the trainer and the runner leave
them: a point's workdir (config.json, metrics.jsonl, role.json), a searched
cell's choice file, study.json; the report tests read them back."""

import json
import math
import os

from configs import fashion_mnist
from lbt.io import layout
from lbt.reports import study_report


def write_point(workdir, name, arg, *, updates, evals, final_distance=None,
                validation=None, diverged_at=None, train_extra=None, summary_extra=None,
                role=None, **changes):
  """A point workdir as the trainer leaves it: config.json and metrics.jsonl,
  and role.json when `role` is given (else none: a workdir from before roles,
  which the report migrates from the name).

  The distance from init follows 0.5·log t + final_distance − 0.5·log(updates);
  `train_extra(t)` adds fields to update t's record, `summary_extra` to the summary.
  """
  config = fashion_mnist.get_config(arg + ",model=mlp")
  for dotted, value in changes.items():
    *parents, leaf = dotted.split("__")
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = value
  point_dir = os.path.join(workdir, name)
  os.makedirs(point_dir)
  with open(os.path.join(point_dir, "config.json"), "w") as f:
    f.write(config.to_json())
  if role is not None:
    with open(os.path.join(point_dir, layout.ROLE), "w") as f:
      json.dump(role, f)
  final_distance = final_distance or 5.0
  last = diverged_at or updates
  records = [{"step": 0, "kind": "run", "num_train_steps": updates, "steps_per_epoch":
              updates // 2, "effective_learning_rate": 0.1, "batch_size": config.batch_size}]
  for t in range(1, last + 1):
    records.append({"step": t, "kind": "train", "loss": 2.0 / t,
                    "distance_from_init": 0.5 * math.log(t) + final_distance
                    - 0.5 * math.log(updates), **(train_extra(t) if train_extra else {})})
  for step, accuracy in evals:
    if validation is not None:
      records.append({"step": step, "kind": "validation", "accuracy": validation})
    records.append({"step": step, "kind": "eval", "accuracy": accuracy, "loss": 0.4})
  if diverged_at:
    records.append({"step": diverged_at, "kind": "diverged", "loss": "nan",
                    "learning_rate": 2.5, "grad_norm": "nan"})
  else:
    records.append({"step": updates, "kind": "summary", "eval_accuracy": evals[-1][1],
                    "wall_time_s": 10.0, "examples_per_second": 1000.0,
                    **({"validation_accuracy": validation} if validation else {}),
                    **(summary_extra or {})})
  with open(os.path.join(point_dir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)


def write_choice(workdir, cell, **fields):
  """The runner's choice file for a searched cell."""
  path = os.path.join(workdir, layout.choice_file(cell))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump({"cell": cell, "capped": False, "tie": 0.005, **fields}, f)


def finish_study(workdir, target):
  """study.json as the runner writes it, then the report; returns its text."""
  with open(os.path.join(workdir, "study.json"), "w") as f:
    json.dump({"points": sorted(os.listdir(workdir)), "target_accuracy": target}, f)
  with open(study_report.build_report(workdir)) as f:
    return f.read()
