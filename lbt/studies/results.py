"""A study's results: each point's outcome, read from its workdir, and results.sqlite.

The point workdirs are the source of truth. A point is finished when its
metrics.jsonl holds a summary, diverged when it holds a divergence (a result,
not an error); the study runner adds only `study_outcome.json` for outcomes the
trainer cannot record itself (another failure). `DIR/results.sqlite` (one row
per point, `point_row`) is derived from them, so it can be rebuilt at any time,
and it is: whenever it is opened and found damaged, not a database, of an older
schema, or missing a point that has a workdir (`read_database`,
`write_row`). The study runner writes rows; the report reads them; neither
imports the other. A row carries its point's role (role.json,
`lbt.studies.points`; a workdir from before roles gets the one its name says,
written once), so the report never reads a name.

Every write of the database replaces it whole: the rows are written into a
temporary file with no journal and renamed over the database, under a lock
file (locally) or as a compare-and-swap of the object (gs://,
`lbt.io.remote.update_object`). No rollback journal ever sits beside the
database, so a killed writer leaves the old file or the new one, and reads
open it immutable (a journal left by an older lbt is ignored, then removed).

The target of the columns test_target_accuracy, updates_to_test_target and
examples_to_test_target is a TEST accuracy (they count the updates and
examples until the test accuracy first reaches it; the steps-to-target
protocols of lbt.limit train to a VALIDATION accuracy, in their own limit.json).
It has one precedence, resolved once by the study runner and recorded in
study.json as "target_accuracy" (`resolve_target`): `--target_accuracy`, else
the study file's TARGET_ACCURACY, else the target this study directory
recorded before, else the benchmark's (DEFAULT_TEST_TARGETS).
"""

import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import itertools
import json
import math
import os
import sqlite3
import urllib.parse
from typing import Dict, List, Optional, Sequence, Tuple

from lbt.engine import config as config_lib
from lbt.io import faults, files, layout, metrics, remote
from lbt.stats import steps_to_target
from lbt.studies import points as points_lib
# A run's status, from its workdir (see `status_of`), in the one vocabulary.
from lbt.studies.statuses import DIVERGED, FAILED, FINISHED, PENDING, RUNNING

# The TEST accuracy the *_to_test_target columns count to, by dataset, when
# nothing else sets one (Fashion-MNIST: what a small MLP reaches in ~2 epochs).
DEFAULT_TEST_TARGETS = {"fashion_mnist": 0.85, "cifar10": 0.90, "imagenet2012": 0.759}
COLUMNS = (
    ("name", "TEXT PRIMARY KEY"), ("position", "INTEGER"), ("status", "TEXT"),
    # The point's role (lbt.studies.points): NULL where its section has no such field.
    ("section", "TEXT"), ("cell", "TEXT"), ("rung", "INTEGER"), ("change", "TEXT"),
    ("variant", "TEXT"), ("batch_schedule", "TEXT"), ("learning_rate", "REAL"),
    ("rule", "TEXT"), ("seed_of", "TEXT"), ("seed", "INTEGER"), ("optimizer", "TEXT"),
    ("batch_size", "INTEGER"),
    ("microbatch_size", "INTEGER"), ("epochs", "REAL"), ("updates", "INTEGER"),
    ("base_learning_rate", "REAL"), ("effective_learning_rate", "REAL"),
    ("scaling", "TEXT"), ("schedule", "TEXT"), ("warmup_epochs", "REAL"),
    ("ghost_size", "INTEGER"), ("label_smoothing", "REAL"),
    ("validation_examples", "INTEGER"), ("final_accuracy", "REAL"),
    ("best_accuracy", "REAL"), ("final_train_loss", "REAL"), ("final_distance", "REAL"),
    ("validation_accuracy", "REAL"),
    # To the first evaluated update whose TEST accuracy reaches test_target_accuracy
    # (the validation split's targets belong to lbt.limit, not to these columns).
    ("test_target_accuracy", "REAL"), ("updates_to_test_target", "INTEGER"),
    ("examples_to_test_target", "INTEGER"),
    ("wall_time_s", "REAL"), ("examples_per_second", "REAL"), ("diverged_update", "INTEGER"),
    ("diverged_loss", "REAL"), ("diverged_learning_rate", "REAL"), ("error", "TEXT"),
    ("config_hash", "TEXT"), ("config_json", "TEXT"))
COLUMN_NAMES = tuple(c for c, _ in COLUMNS)
# Role field -> its column ("schedule" is the config's learning-rate schedule).
ROLE_COLUMNS = {"section": "section", "cell": "cell", "rung": "rung", "change": "change",
                "variant": "variant", "schedule": "batch_schedule",
                "learning_rate": "learning_rate", "rule": "rule", "of": "seed_of",
                "seed": "seed"}


@dataclasses.dataclass(frozen=True)
class PointRecords:
  """Everything a point's workdir says, read once: its config, its
  metrics.jsonl records, the runner's outcome file, its role and its facts
  (what the study file declares is `lbt.studies.points.Point`)."""
  name: str
  config: dict
  records: List[dict]
  outcome: dict
  role: dict
  facts: dict = dataclasses.field(default_factory=dict)  # facts.json; {} before lbt kept it

  def last(self, kind: str) -> dict:
    return next((r for r in reversed(self.records) if r["kind"] == kind), {})

  def of_kind(self, kind: str) -> List[dict]:
    return [r for r in self.records if r["kind"] == kind]

  @property
  def status(self) -> str:
    return status_of(self.records, self.outcome)


def read_outcome(point_dir: str) -> dict:
  try:
    return json.loads(files.read_text(os.path.join(point_dir, layout.OUTCOME)) or "{}")
  except (OSError, ValueError):
    return {}


def status_of(records: Sequence[dict], outcome: dict) -> str:
  kinds = {r["kind"] for r in records}
  if "summary" in kinds:
    return FINISHED
  if "diverged" in kinds:
    return DIVERGED
  return outcome.get("status", RUNNING)


def point_status(point_dir: str) -> str:
  """finished / diverged / failed / running (started, not ended) / pending."""
  if not files.exists(os.path.join(point_dir, layout.CONFIG)):
    return PENDING
  return status_of(metrics.read_jsonl(point_dir), read_outcome(point_dir))


def load_point(workdir: str, name: str) -> PointRecords:
  point_dir = os.path.join(workdir, name)
  config = json.loads(files.read_text(os.path.join(point_dir, layout.CONFIG)))
  return PointRecords(name, config, metrics.read_jsonl(point_dir), read_outcome(point_dir),
                      points_lib.read_role(point_dir, name), read_facts(point_dir))


def read_facts(point_dir: str) -> dict:
  """The run's facts.json (lbt.engine.config.RunFacts as the run derived
  them); {} when absent (not started, or written before lbt kept it) or damaged."""
  try:
    facts = json.loads(files.read_text(os.path.join(point_dir, layout.FACTS)) or "{}")
  except (OSError, ValueError):
    return {}
  return facts if isinstance(facts, dict) else {}


def facts_of(point: PointRecords) -> dict:
  """The facts a row reads: the point's facts.json, or for a workdir written
  before lbt kept it, the same few derived once here from its config.json
  and its run record."""
  if point.facts:
    return point.facts
  config, run = point.config, point.last("run")
  batch = config["batch_size"]
  return {"batch_size": batch, "microbatch_size": config["microbatch_size"] or batch,
          "steps_per_epoch": run.get("steps_per_epoch"),
          "peak_learning_rate": run.get("effective_learning_rate"),
          "validation_examples": config_lib.dataset_field(config, "validation_examples")}


def study_info(workdir: str) -> dict:
  """study.json: the study's file, point order and target (empty if absent or damaged)."""
  try:
    info = json.loads(files.read_text(os.path.join(workdir, layout.STUDY)) or "{}")
  except ValueError:
    return {}
  return info if isinstance(info, dict) else {}


def resolve_target(flag: Optional[float], study_constant: Optional[float],
                   recorded: Optional[float]) -> Optional[float]:
  """The study's target accuracy (see the module docstring); None: the
  benchmark's, per point (DEFAULT_TEST_TARGETS)."""
  for value in (flag, study_constant, recorded):
    if value is not None:
      return value
  return None


def point_names(workdir: str) -> List[str]:
  """Points with a workdir, in the study's order (then by name)."""
  order = study_info(workdir).get("points", [])
  directory = files.path(workdir)
  found = [n for n in sorted(p.name for p in directory.iterdir())
           if n not in layout.RESERVED and files.exists(os.path.join(workdir, n, layout.CONFIG))
           ] if directory.is_dir() else []
  rank = {n: i for i, n in enumerate(order)}
  return sorted(found, key=lambda n: (rank.get(n, len(order)), n))


def _finite(value) -> Optional[float]:
  return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def point_row(point: PointRecords, info: dict) -> Dict[str, object]:
  """One point's row, from its workdir's records and facts and the study's
  study.json; what the run derived (batch, microbatch, epochs, peak LR) is
  read from its facts, not derived again from config.json."""
  config, outcome, facts = point.config, point.outcome, facts_of(point)
  run, summary, diverged = point.last("run"), point.last("summary"), point.last("diverged")
  evals, train = point.of_kind("eval"), point.of_kind("train")
  target = info.get("target_accuracy") or DEFAULT_TEST_TARGETS.get(config["dataset"]["name"])
  batch = facts["batch_size"]
  updates = summary.get("num_train_steps", run.get("num_train_steps"))
  to_target = steps_to_target.first_at_target(
      [r["step"] for r in evals], [r["accuracy"] for r in evals], target) if target else None
  # A run whose batch changes logs each update's batch; examples, not
  # updates x batch, are what it trained on.
  examples = list(itertools.accumulate(r.get("batch_size", batch) for r in train))
  seen = lambda update: int(examples[update - 1]) if len(examples) >= update else update * batch
  optimizer, schedule = config["optimizer"], config["schedule"]
  order = info.get("points", [])
  return {
      "name": point.name, "position": order.index(point.name) if point.name in order else None,
      "status": point.status,
      **{column: point.role.get(field) for field, column in ROLE_COLUMNS.items()},
      "optimizer": optimizer["name"], "batch_size": batch,
      "microbatch_size": facts["microbatch_size"],
      "epochs": (summary.get("examples", updates * batch) / batch / facts["steps_per_epoch"]
                 if updates else None),
      "updates": updates, "base_learning_rate": optimizer["learning_rate"],
      "effective_learning_rate": facts["peak_learning_rate"],
      "scaling": optimizer.get("scaling"), "schedule": schedule["name"],
      "warmup_epochs": schedule.get("warmup_epochs"),
      "ghost_size": config["bn"].get("ghost_size", 0),
      "label_smoothing": config["loss"]["label_smoothing"],
      "validation_examples": facts["validation_examples"],
      "final_accuracy": summary.get("eval_accuracy", evals[-1]["accuracy"] if evals else None),
      "best_accuracy": max((r["accuracy"] for r in evals), default=None),
      "final_train_loss": _finite(train[-1]["loss"]) if train else None,
      "final_distance": _finite(next((r["distance_from_init"] for r in reversed(train)
                                      if "distance_from_init" in r), None)),
      "validation_accuracy": summary.get("validation_accuracy",
                                         point.last("validation").get("accuracy")),
      "test_target_accuracy": target, "updates_to_test_target": to_target,
      "examples_to_test_target": seen(to_target) if to_target is not None else None,
      "wall_time_s": summary.get("wall_time_s", outcome.get("wall_time_s")),
      "examples_per_second": summary.get("examples_per_second"),
      "diverged_update": diverged.get("step", outcome.get("update")),
      "diverged_loss": _finite(diverged.get("loss", outcome.get("loss"))),
      "diverged_learning_rate": diverged.get("learning_rate", outcome.get("learning_rate")),
      "error": outcome.get("error"),
      "config_hash": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
      "config_json": json.dumps(config, sort_keys=True)}


def load_study(workdir: str) -> Tuple[List[dict], Dict[str, PointRecords]]:
  """Every point's row and records, each workdir read once, in study order."""
  info = study_info(workdir)
  points = {name: load_point(workdir, name) for name in point_names(workdir)}
  return [point_row(p, info) for p in points.values()], points


# ---- results.sqlite ----

def rebuild_database(workdir: str) -> Tuple[List[dict], Dict[str, PointRecords]]:
  """Rewrites results.sqlite from the point workdirs; returns the rows and points."""
  rows, points = load_study(workdir)
  path = os.path.join(workdir, layout.DATABASE)
  with files.writing(path, "the study database"):
    if files.is_remote(path):
      remote.update_object(path, lambda local: _write_whole(local, rows))
    else:
      with _exclusive(path):
        _write_whole(path, rows)
  return rows, points


def write_row(workdir: str, row: Dict[str, object]) -> None:
  """Inserts or replaces one point's row; the database is replaced whole.

  A database that cannot be read, or that is stale (see `read_database`), is
  rebuilt from the workdirs first, so that it never holds fewer rows than
  there are point workdirs.
  """
  path = os.path.join(workdir, layout.DATABASE)

  def edit(local: str) -> None:
    rows = _read_rows(local)
    if rows is None or _stale(workdir, rows):
      rows, _ = load_study(workdir)
    merged = {r["name"]: r for r in rows}
    merged[row["name"]] = row
    _write_whole(local, _ordered(merged.values()))

  with files.writing(path, "the study database"):
    if files.is_remote(path):
      remote.update_object(path, edit)
    else:
      with _exclusive(path):
        edit(path)


def read_database(workdir: str) -> List[Dict[str, object]]:
  """The rows of the study's results.sqlite, in study order; rebuilt from the
  workdirs first when it is absent, damaged or stale."""
  path = os.path.join(workdir, layout.DATABASE)
  if files.is_remote(path):
    data = files.path(path).read_bytes() if files.exists(path) else None
    with remote.local_copy(data, layout.DATABASE) as local:
      rows = _read_rows(local) if data is not None else None
  else:
    rows = _read_rows(path)
  if rows is None or _stale(workdir, rows):
    rows, _ = rebuild_database(workdir)
  return rows


def _stale(workdir: str, rows: Sequence[dict]) -> bool:
  """Whether a point workdir of the study directory has no row (a row whose
  workdir was removed goes at the next rebuild, the report's)."""
  return bool(set(point_names(workdir)) - {r["name"] for r in rows})


def _ordered(rows) -> List[dict]:
  return sorted(rows, key=lambda r: (r["position"] is None, r["position"] or 0, r["name"]))


def _read_rows(path: str) -> Optional[List[dict]]:
  """The rows of a local database file; None when it is absent, not a
  database, damaged, or of another schema. Opened immutable: a rollback
  journal beside it (from an older lbt) is never applied."""
  if not os.path.isfile(path):
    return None
  uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?immutable=1"
  try:
    connection = sqlite3.connect(uri, uri=True)
    try:
      connection.row_factory = sqlite3.Row
      if connection.execute("PRAGMA quick_check").fetchone()[0] != "ok":
        return None
      rows = [dict(r) for r in connection.execute("SELECT * FROM points")]
      columns = [c[1] for c in connection.execute("PRAGMA table_info(points)")]
    finally:
      connection.close()
  except sqlite3.DatabaseError:
    return None
  return _ordered(rows) if tuple(columns) == COLUMN_NAMES else None


def _write_whole(path: str, rows: Sequence[dict]) -> None:
  """Writes `rows` as a new database at local `path`: a temporary file with no
  journal, fsynced, renamed over `path`; a journal an older lbt left is removed."""
  tmp = f"{path}.{os.getpid()}.tmp"
  with contextlib.suppress(FileNotFoundError):
    os.remove(tmp)
  try:
    connection = sqlite3.connect(tmp, isolation_level=None)
    try:
      connection.execute("PRAGMA journal_mode=OFF")
      connection.execute("PRAGMA synchronous=OFF")  # fsynced below, once.
      connection.execute(f"CREATE TABLE points ({', '.join(f'{c} {t}' for c, t in COLUMNS)})")
      connection.execute("BEGIN")
      connection.executemany(
          f"INSERT INTO points ({', '.join(COLUMN_NAMES)}) "
          f"VALUES ({', '.join('?' * len(COLUMN_NAMES))})",
          [[row[c] for c in COLUMN_NAMES] for row in rows])
      connection.execute("COMMIT")
    finally:
      connection.close()
    with open(tmp, "rb") as f:
      os.fsync(f.fileno())
    for leftover in ("-journal", "-wal", "-shm"):
      with contextlib.suppress(FileNotFoundError):
        os.remove(path + leftover)
    faults.moment("database")
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


@contextlib.contextmanager
def _exclusive(path: str):
  """One writer of the local database `path` at a time (shards on one machine
  or on a shared filesystem); removes what killed writers left."""
  with open(os.path.join(os.path.dirname(path), layout.DATABASE_LOCK), "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    for leftover in glob.glob(glob.escape(path) + ".*.tmp"):
      with contextlib.suppress(OSError):
        os.remove(leftover)
    yield
