"""The batch-size study: every point of a study file, run, recorded and reported.

  python -m lbt.study --study=configs/studies/fashion_mnist.py --workdir=DIR \\
      [--only=GLOB,...] [--shard=I/N]

A study file defines `get_study(arg) -> {point name: run config}`. Each point
runs in `DIR/<point>/`, an ordinary run workdir (`lbt.main` on it resumes it
too). The workdirs are the source of truth: a point is finished when its
metrics.jsonl holds a summary, diverged when it holds a divergence (a result,
not an error), and the runner adds only `study_outcome.json` for outcomes the
trainer cannot record itself (another failure). So finished points are
skipped, an interrupted point resumes from its checkpoint, and
`DIR/results.sqlite` (one row per point: `point_row`, written one transaction
at a time) can be rebuilt from the workdirs at any time (`rebuild_database`,
swapped in atomically): shards on several hosts never conflict.

DIR may be gs://BUCKET/DIR: every file goes through lbt.workdir's epath
helpers, and SQLite, which cannot open an object, edits a local copy of
results.sqlite that replaces the object after each row, unless another shard
replaced it first (then the row is applied again to theirs:
`lbt.remote.update_object`).

Why shards are `points[i::n]` of the selected points: a deterministic split
that every host computes alone from the same command, and that interleaves
cheap small-batch and expensive large-batch points.
"""

import fnmatch
import hashlib
import itertools
import json
import math
import os
import re
import sqlite3
import sys
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import ml_collections

from lbt import cli, diagnostics, preemption, remote
from lbt import workdir as workdir_lib
from lbt.errors import ConfigError

OUTCOME_FILE = "study_outcome.json"
STUDY_FILE = "study.json"
# Statuses of a point, from its workdir (see `point_status`).
FINISHED, DIVERGED, FAILED, RUNNING, PENDING = (
    "finished", "diverged", "failed", "running", "pending")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def parse_shard(text: str) -> Tuple[int, int]:
  """"I/N" -> (I, N) with 0 <= I < N."""
  match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
  if not match or not int(match[1]) < int(match[2]):
    raise ConfigError("--shard", text, "I/N with 0 <= I < N, e.g. 0/2")
  return int(match[1]), int(match[2])


def select_points(names: Sequence[str], only: Sequence[str] = (),
                  shard: Tuple[int, int] = (0, 1)) -> List[str]:
  """The points this process runs: those matching a glob of `only` (all when
  empty), then every N-th of them starting at I."""
  index, count = shard
  if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
    raise ConfigError("shard", shard, "(I, N) with 0 <= I < N")
  for pattern in only:
    if not fnmatch.filter(names, pattern):
      raise ConfigError("--only", pattern, f"a glob matching a point of the study: "
                        f"{', '.join(names)}")
  chosen = [n for n in names if not only or any(fnmatch.fnmatch(n, p) for p in only)]
  return chosen[index::count]


def read_outcome(point_dir: str) -> dict:
  try:
    return json.loads(workdir_lib.read_text(os.path.join(point_dir, OUTCOME_FILE)) or "{}")
  except (OSError, ValueError):
    return {}


def _write_json(path: str, value) -> None:
  """Atomic: a killed runner leaves the old file or the new one, never half."""
  workdir_lib.write_text_atomic(path, json.dumps(value, indent=2, sort_keys=True))


def point_status(point_dir: str) -> str:
  """finished / diverged / failed / running (started, not ended) / pending."""
  from lbt import metrics
  if not workdir_lib.exists(os.path.join(point_dir, "config.json")):
    return PENDING
  kinds = {r["kind"] for r in metrics.read_jsonl(point_dir)}
  if "summary" in kinds:
    return FINISHED
  if "diverged" in kinds:
    return DIVERGED
  return read_outcome(point_dir).get("status", RUNNING)


def agreed_status(point_dir: str) -> str:
  """Process 0's `point_status`, on every process: all must skip or run a
  point together, and only process 0 is sure to see the metrics it wrote."""
  import jax
  status = point_status(point_dir) if jax.process_index() == 0 else PENDING
  if jax.process_count() == 1:
    return status
  import numpy as np
  from jax.experimental import multihost_utils
  order = (FINISHED, DIVERGED, FAILED, RUNNING, PENDING)
  code = multihost_utils.broadcast_one_to_all(np.int32(order.index(status)))
  return order[int(code)]


def _examples(config, num_train_examples: int) -> int:
  """Examples one point trains on: the ETA's measure of its cost."""
  if config.num_train_steps > 0:
    return config.num_train_steps * config.batch_size
  return int(config.num_epochs * num_train_examples)


def validate_points(points: Mapping[str, ml_collections.ConfigDict], workdir: str) -> None:
  """Every point, before any runs: names, configs, and existing workdirs."""
  import jax
  from lbt import config as config_lib, train
  if not points:
    raise ConfigError("--study", "{}", "a study with at least one point")
  for name, config in points.items():
    if not isinstance(name, str) or not NAME.match(name):
      raise ConfigError("point name", name, "letters, digits and . _ + - (a directory name)")
    if not isinstance(config, ml_collections.ConfigDict):
      raise ConfigError(f"point {name}", type(config).__name__, "an ml_collections.ConfigDict")
    try:
      config_lib.validate(config, num_devices=jax.device_count(),
                          num_processes=jax.process_count())
      train.check_workdir_config(config, os.path.join(workdir, name), ())
    except ConfigError as e:
      raise ConfigError(f"point {name}: {e.field}", e.value, e.allowed) from None


class Eta:
  """The study's remaining time from the seconds per example measured so far."""

  def __init__(self, costs: Mapping[str, int]):
    self.costs, self.done_examples, self.seconds = dict(costs), 0, 0.0

  def record(self, name: str, seconds: float) -> None:
    self.done_examples += self.costs.pop(name)
    self.seconds += seconds

  def skip(self, name: str) -> None:
    self.costs.pop(name)

  def text(self) -> str:
    if not self.done_examples:
      return "ETA after the first point"
    left = self.seconds / self.done_examples * sum(self.costs.values())
    return f"ETA {int(left // 60)} min {int(left % 60):02d} s"


def _run_point(name: str, config, point_dir: str, is_main: bool) -> Tuple[str, dict]:
  """Trains one point to its end; returns its status and the outcome to record."""
  from lbt import train
  try:
    train.train_and_evaluate(config, point_dir)
    return FINISHED, {}
  except train.Diverged as e:
    return DIVERGED, {"update": e.update, "loss": e.loss, "grad_norm": e.grad_norm,
                      "learning_rate": e.learning_rate}
  except (KeyboardInterrupt, preemption.Preempted):
    raise
  except workdir_lib.WorkdirBusy as e:  # Another runner has this point.
    if is_main:
      print(f"lbt.study: point {name} skipped: {cli.one_line(e)}", file=sys.stderr,
            flush=True)
    return RUNNING, {}
  except Exception as e:  # pylint: disable=broad-except
    if is_main:
      print(f"lbt.study: point {name} failed: {type(e).__name__}: {cli.one_line(e)}",
            file=sys.stderr, flush=True)
    return FAILED, {"error": f"{type(e).__name__}: {cli.one_line(e)}"}


def run_study(points: Mapping[str, ml_collections.ConfigDict], workdir: str, *,
              only: Sequence[str] = (), shard: Tuple[int, int] = (0, 1),
              target_accuracy: float = None) -> Dict[str, str]:
  """Runs the selected points of a study in `workdir/<point>/`.

  Every selected point is validated before the first one starts. Finished and
  diverged points are skipped; an interrupted one resumes from its checkpoint;
  a point that fails for another reason is recorded and the study goes on.
  Process 0 writes the database row of each point as it starts and ends, and
  the rebuilt database and the report at the end.

  Args:
    points: the study, point name -> run config, in order.
    workdir: the study's directory.
    only: globs of point names to run (all when empty).
    shard: (I, N): run every N-th selected point starting at the I-th.
    target_accuracy: of the updates-to-target columns; None keeps the one of
      an earlier run of this study, else the benchmark's default.

  Returns:
    Point name -> finished / diverged / failed, for the points this call ran.
  """
  import jax
  from lbt import data, report
  names = list(points)
  selected = select_points(names, only, shard)
  workdir_lib.check_location(workdir, "--workdir")
  validate_points(points, workdir)
  is_main = jax.process_index() == 0
  if is_main:
    workdir_lib.makedirs(workdir)
    study_path = os.path.join(workdir, STUDY_FILE)
    previous = json.loads(workdir_lib.read_text(study_path) or "{}")
    if target_accuracy is None:
      target_accuracy = previous.get("target_accuracy")
    _write_json(study_path, {"points": names, "target_accuracy": target_accuracy})
  database = os.path.join(workdir, DATABASE)

  costs = {n: _examples(points[n], data.DATASETS.get(
      points[n].dataset.name).num_train_examples) for n in selected}
  eta, statuses = Eta(costs), {}
  for position, name in enumerate(selected, 1):
    point_dir = os.path.join(workdir, name)
    status = agreed_status(point_dir)
    if status in (FINISHED, DIVERGED):
      statuses[name] = status
      eta.skip(name)
      if is_main:
        print(f"lbt.study: [{position}/{len(selected)}] {name}: {status}, skipped",
              flush=True)
      continue
    if is_main:
      print(f"lbt.study: [{position}/{len(selected)}] {name} "
            f"({'resuming' if status == RUNNING else 'starting'}; {eta.text()})", flush=True)
      workdir_lib.remove(os.path.join(point_dir, OUTCOME_FILE))  # A failed point's retry.
    start = time.time()
    status, outcome = _run_point(name, points[name], point_dir, is_main)
    eta.record(name, time.time() - start)
    statuses[name] = status
    if status == RUNNING:  # Its workdir is another runner's: leave it alone.
      continue
    if is_main:
      if status != FINISHED:
        if not workdir_lib.exists(os.path.join(point_dir, "config.json")):
          from lbt import train  # A point that failed before its first write
          train.write_config(points[name], point_dir)  # still gets its row.
        _write_json(os.path.join(point_dir, OUTCOME_FILE),
                    {"status": status, "wall_time_s": time.time() - start, **outcome})
      write_row(database, point_row(workdir, name))
  if is_main:
    path = report.build_report(workdir)
    print(f"lbt.study: report {path}", flush=True)
  return statuses


# ---- results.sqlite: one row per point, derived from its workdir ----

DATABASE = "results.sqlite"
# The test accuracy the updates-to-target columns count to, by dataset, when
# the study does not set one (Fashion-MNIST: what a small MLP reaches in ~2 epochs).
DEFAULT_TARGETS = {"fashion_mnist": 0.85, "cifar10": 0.90, "imagenet2012": 0.759}
COLUMNS = (
    ("name", "TEXT PRIMARY KEY"), ("position", "INTEGER"), ("status", "TEXT"),
    ("grid", "TEXT"), ("variant", "TEXT"), ("optimizer", "TEXT"), ("batch_size", "INTEGER"),
    ("microbatch_size", "INTEGER"), ("epochs", "REAL"), ("updates", "INTEGER"),
    ("base_learning_rate", "REAL"), ("effective_learning_rate", "REAL"),
    ("scaling", "TEXT"), ("schedule", "TEXT"), ("warmup_epochs", "REAL"),
    ("ghost_size", "INTEGER"), ("label_smoothing", "REAL"),
    ("validation_examples", "INTEGER"), ("final_accuracy", "REAL"),
    ("best_accuracy", "REAL"), ("final_train_loss", "REAL"), ("final_distance", "REAL"),
    ("validation_accuracy", "REAL"), ("target_accuracy", "REAL"),
    ("updates_to_target", "INTEGER"), ("examples_to_target", "INTEGER"),
    ("wall_time_s", "REAL"), ("examples_per_second", "REAL"), ("diverged_update", "INTEGER"),
    ("diverged_loss", "REAL"), ("diverged_learning_rate", "REAL"), ("error", "TEXT"),
    ("config_hash", "TEXT"), ("config_json", "TEXT"))
COLUMN_NAMES = tuple(c for c, _ in COLUMNS)
_POINT = re.compile(r"^[^-]+-b\d+(?:-(?P<variant>.+))?$")


def _study_file(workdir: str) -> dict:
  return json.loads(workdir_lib.read_text(os.path.join(workdir, STUDY_FILE)) or "{}")


def point_names(workdir: str) -> List[str]:
  """Points with a workdir, in the study's order (then by name)."""
  order = _study_file(workdir).get("points", [])
  directory = workdir_lib.path(workdir)
  found = [n for n in sorted(p.name for p in directory.iterdir()) if workdir_lib.exists(
      os.path.join(workdir, n, "config.json"))] if directory.is_dir() else []
  rank = {n: i for i, n in enumerate(order)}
  return sorted(found, key=lambda n: (rank.get(n, len(order)), n))


def grid_of(name: str) -> str:
  """The learning-rate grid a point belongs to: its name without `-lr<value>`."""
  return re.sub(r"-lr[^-]+$", "", name)


def variant_of(name: str) -> str:
  match = _POINT.match(grid_of(name))
  return (match["variant"] or "") if match else grid_of(name)


def _finite(value) -> Optional[float]:
  return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def point_row(workdir: str, name: str) -> Dict[str, object]:
  """One point's row, read from its workdir alone (plus the study's target)."""
  from lbt import metrics
  point_dir = os.path.join(workdir, name)
  config = json.loads(workdir_lib.read_text(os.path.join(point_dir, "config.json")))
  records = metrics.read_jsonl(point_dir)
  last = lambda kind: next((r for r in reversed(records) if r["kind"] == kind), {})
  run, summary, diverged = last("run"), last("summary"), last("diverged")
  outcome = read_outcome(point_dir)
  evals = [r for r in records if r["kind"] == "eval"]
  train = [r for r in records if r["kind"] == "train"]
  study_info = _study_file(workdir)
  target = study_info.get("target_accuracy") or DEFAULT_TARGETS.get(config["dataset"]["name"])
  batch = config["batch_size"]
  updates = summary.get("num_train_steps", run.get("num_train_steps"))
  to_target = diagnostics.updates_to_target(
      [r["step"] for r in evals], [r["accuracy"] for r in evals], target) if target else None
  # A run whose batch changes logs each update's batch; examples, not
  # updates x batch, are what it trained on.
  examples = list(itertools.accumulate(r.get("batch_size", batch) for r in train))
  seen = lambda update: int(examples[update - 1]) if len(examples) >= update else update * batch
  optimizer, schedule = config["optimizer"], config["schedule"]
  wall = summary.get("wall_time_s", outcome.get("wall_time_s"))
  order = study_info.get("points", [])
  return {
      "name": name, "position": order.index(name) if name in order else None,
      "status": point_status(point_dir), "grid": grid_of(name),
      "variant": variant_of(name), "optimizer": optimizer["name"], "batch_size": batch,
      "microbatch_size": config["microbatch_size"] or batch,
      "epochs": (summary.get("examples", updates * batch) / batch / run["steps_per_epoch"]
                 if updates else None),
      "updates": updates, "base_learning_rate": optimizer["learning_rate"],
      "effective_learning_rate": run.get("effective_learning_rate"),
      "scaling": optimizer.get("scaling"), "schedule": schedule["name"],
      "warmup_epochs": schedule.get("warmup_epochs"),
      "ghost_size": config["bn"].get("ghost_size", 0),
      "label_smoothing": config["loss"]["label_smoothing"],
      "validation_examples": config["dataset"].get("validation_examples", 0),
      "final_accuracy": summary.get("eval_accuracy", evals[-1]["accuracy"] if evals else None),
      "best_accuracy": max((r["accuracy"] for r in evals), default=None),
      "final_train_loss": _finite(train[-1]["loss"]) if train else None,
      "final_distance": _finite(train[-1].get("distance_from_init")) if train else None,
      "validation_accuracy": summary.get("validation_accuracy",
                                         last("validation").get("accuracy")),
      "target_accuracy": target, "updates_to_target": to_target,
      "examples_to_target": seen(to_target) if to_target is not None else None,
      "wall_time_s": wall, "examples_per_second": summary.get("examples_per_second"),
      "diverged_update": diverged.get("step", outcome.get("update")),
      "diverged_loss": _finite(diverged.get("loss", outcome.get("loss"))),
      "diverged_learning_rate": diverged.get("learning_rate", outcome.get("learning_rate")),
      "error": outcome.get("error"),
      "config_hash": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
      "config_json": json.dumps(config, sort_keys=True)}


def _connect(path: str) -> sqlite3.Connection:
  connection = sqlite3.connect(path, timeout=60)
  connection.execute(f"CREATE TABLE IF NOT EXISTS points "
                     f"({', '.join(f'{c} {t}' for c, t in COLUMNS)})")
  return connection


def write_row(path: str, row: Dict[str, object]) -> None:
  """Inserts or replaces one row in one transaction (on a remote `path`, in a
  local copy that then replaces the object)."""
  with workdir_lib.writing(path, "the study database"):
    if workdir_lib.is_remote(path):
      remote.update_object(path, lambda local: _insert(local, row))
    else:
      _insert(path, row)


def _insert(path: str, row: Dict[str, object]) -> None:
  connection = _connect(path)
  try:
    with connection:
      connection.execute(f"INSERT OR REPLACE INTO points ({', '.join(COLUMN_NAMES)}) "
                         f"VALUES ({', '.join('?' * len(COLUMN_NAMES))})",
                         [row[c] for c in COLUMN_NAMES])
  finally:
    connection.close()


def rebuild_database(workdir: str) -> List[Dict[str, object]]:
  """Rebuilds results.sqlite from the point workdirs (atomically); returns its rows."""
  rows = [point_row(workdir, name) for name in point_names(workdir)]
  path = os.path.join(workdir, DATABASE)
  if workdir_lib.is_remote(path):  # Built locally, then one object write.
    with remote.local_copy(None, DATABASE) as local:
      for row in rows:
        write_row(local, row)
      _connect(local).close()
      with workdir_lib.writing(path, "the study database"), open(local, "rb") as f:
        workdir_lib.path(path).write_bytes(f.read())
    return rows
  tmp = path + f".{os.getpid()}.tmp"
  if os.path.exists(tmp):
    os.remove(tmp)
  for row in rows:
    write_row(tmp, row)
  _connect(tmp).close()  # An empty study still gets its table.
  os.replace(tmp, path)
  return rows


def read_database(path: str) -> List[Dict[str, object]]:
  """The rows of a results.sqlite, in study order."""
  if workdir_lib.is_remote(path):  # SQLite opens a local copy.
    with remote.local_copy(workdir_lib.path(path).read_bytes(), DATABASE) as local:
      return read_database(local)
  connection = sqlite3.connect(path)
  try:
    connection.row_factory = sqlite3.Row
    return [dict(r) for r in connection.execute(
        "SELECT * FROM points ORDER BY position IS NULL, position, name")]
  finally:
    connection.close()


def _flags():
  from absl import flags
  values = flags.FlagValues()
  flags.DEFINE_string("study", None, "A study file, with its argument after ':', e.g. "
                      "configs/studies/fashion_mnist.py:quick.", flag_values=values)
  flags.DEFINE_string("workdir", None, "The study's directory: one workdir per point, "
                      "results.sqlite and report/. Rerun to resume.", flag_values=values)
  flags.DEFINE_list("only", [], "Globs of point names to run, e.g. 'lars-*,adam-b128'.",
                    flag_values=values)
  flags.DEFINE_string("shard", "0/1", "I/N: run every N-th point starting at the I-th, "
                      "so that N hosts split the study.", flag_values=values)
  flags.DEFINE_float("target_accuracy", None, "Test accuracy of the updates-to-target "
                     "columns (default: the study file's TARGET_ACCURACY, else the "
                     "benchmark's).", flag_values=values)
  return values


def main(argv: Sequence[str]) -> int:
  """The command line; returns the exit status (2 bad input, 1 a failed point)."""
  values = _flags()
  outcome = {}

  def command():
    cli.parse_flags(values, argv, program="lbt.study")
    if not values.study:
      raise ConfigError("--study", None, "a study file such as "
                        "configs/studies/fashion_mnist.py or ...fashion_mnist.py:quick")
    if not values.workdir:
      raise ConfigError("--workdir", None, "a directory for the study")
    if (not workdir_lib.is_remote(values.workdir) and os.path.exists(values.workdir)
        and not os.path.isdir(values.workdir)):
      raise ConfigError("--workdir", values.workdir, "a directory, not a file")
    shard = parse_shard(values.shard)
    points, constants = cli.load_python_file(values.study, flag="--study",
                                             function="get_study",
                                             constants=("TARGET_ACCURACY",))
    if not isinstance(points, Mapping):
      raise ConfigError("--study", values.study, "a file whose get_study(arg) returns a "
                        f"dict of point name -> ConfigDict (got {type(points).__name__})")
    target = values.target_accuracy
    if target is None:
      target = constants["TARGET_ACCURACY"]
    if target is not None and (isinstance(target, bool) or not isinstance(target, float)
                               or not 0 < target <= 1):
      raise ConfigError("TARGET_ACCURACY" if values.target_accuracy is None
                        else "--target_accuracy", target, "a test accuracy in (0, 1]")
    outcome.update(run_study(points, values.workdir, only=values.only, shard=shard,
                             target_accuracy=target))

  status = cli.run(command)
  failed = [n for n, s in outcome.items() if s == FAILED]
  if status == 0 and failed:
    print(f"lbt.study: {len(failed)} point(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1
  return status


if __name__ == "__main__":
  cli.keep_freed_host_memory()
  sys.exit(main(sys.argv))
