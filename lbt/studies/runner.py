"""Running a study's points, the machinery `lbt.study` and `lbt.limit` share:
validate every point, claim the directory, run and record each point.

A study file defines `get_study(arg) -> {point name: lbt.studies.points.Point}`:
each point's run config and its role (what the report uses it for; the name
is only a label). Each point runs in `DIR/<point>/`, an ordinary run workdir
(`lbt.main` on it resumes it too) that also holds its role.json. Every point
is validated once, before the first one runs. Finished and
diverged points are skipped, an interrupted one resumes from its checkpoint,
and each point's row of results.sqlite is written as it ends (lbt.studies.results,
which owns the database and the points' outcomes); the command rebuilds the
report at the end.

A study directory belongs to one study: study.json names the study file (and
its argument) that created it, and another study file is refused before
anything trains. Point names may not collide with the study's own files.

Points side by side (`--devices_per_point=D`): on a host with several devices,
small points cannot fill them all, so the study runs one point per group of D
devices at once, each in a thread with its own mesh; a point's results are
those of running it alone on D devices. The programs' compilations are shared
through JAX's persistent compilation cache in DIR/compilation_cache/.

Why shards are `points[i::n]` of the selected points: a deterministic split
that every host computes alone from the same command, and that interleaves
cheap small-batch and expensive large-batch points. A shard that selects no
point leaves the report as it is."""

import concurrent.futures
import fnmatch
import json
import os
import queue
import re
import sys
import threading
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from lbt.io import layout
from lbt import errors
from lbt.engine import config as config_lib
from lbt.engine import programs, train
from lbt.engine import workdir as workdir_lib
from lbt.errors import ConfigError
from lbt.io import cli, faults, files
from lbt.io.preemption import PreemptionNotice
from lbt.studies import points as points_lib
from lbt.studies import results
from lbt.studies.results import DIVERGED, FAILED, FINISHED, PENDING, RUNNING

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


def _write_json(path: str, value) -> None:
  """Atomic: a killed runner leaves the old file or the new one, never half."""
  files.write_text_atomic(path, json.dumps(value, indent=2, sort_keys=True))


def agreed_status(point_dir: str) -> str:
  """Process 0's `point_status`, on every process: all must skip or run a
  point together, and only process 0 is sure to see the metrics it wrote."""
  status = results.point_status(point_dir) if jax.process_index() == 0 else PENDING
  if jax.process_count() == 1:
    return status
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  order = (FINISHED, DIVERGED, FAILED, RUNNING, PENDING)
  code = multihost_utils.broadcast_one_to_all(np.int32(order.index(status)))
  return order[int(code)]


def validate_points(points: Mapping[str, object], workdir: str,
                    num_devices: int = 0) -> Dict[str, config_lib.RunFacts]:
  """Every point, before any runs: names, configs, roles (`lbt.studies.points`:
  a Point, or a ConfigDict whose old name gives its role) and existing
  workdirs, for `num_devices` (default: all) per point; returns each point's
  facts, which its run then uses (validated once)."""
  if not points:
    raise ConfigError("--study", "{}", "a study with at least one point")
  facts, roles = {}, {}
  for name, value in points.items():
    if not isinstance(name, str) or not NAME.match(name):
      raise ConfigError("point name", name, "letters, digits and . _ + - (a directory name)")
    if name in layout.RESERVED or name.startswith(tuple(f"{r}." for r in layout.RESERVED)):
      raise ConfigError("point name", name, "a name other than the study directory's own "
                        f"files and directories ({', '.join(layout.RESERVED)})")
    config, roles[name], _ = points_lib.as_point(name, value)
    try:
      facts[name] = config_lib.validate(config, num_devices=num_devices or jax.device_count())
      workdir_lib.check_config(config, os.path.join(workdir, name), (), allow_flag="")
      workdir_lib.check_facts(facts[name], os.path.join(workdir, name))
    except ConfigError as e:
      raise ConfigError(f"point {name}: {e.field}", e.value, e.allowed) from None
    points_lib.check_agrees(name, config, roles[name])
  points_lib.check_cells(roles)
  points_lib.check_searches(points_lib.study_points(points))
  return facts


def write_roles(workdir: str, points: Mapping[str, points_lib.Point]) -> None:
  """Writes each point's role.json before it trains. The study file owns a
  point's role: a changed one (a cell renamed, or the role an old directory's
  migration read from the name) is rewritten, not refused, because a role
  labels a result and never changes what trains; a changed config, which
  does, is refused (`validate_points`)."""
  for name, point in points.items():
    old = points_lib.write_role(os.path.join(workdir, name), point.role)
    if old is not None:
      print(f"lbt.study: point {name}: role {json.dumps(old, sort_keys=True)} rewritten as "
            f"{json.dumps(point.role, sort_keys=True)} (the study file's)", flush=True)


class Eta:
  """The study's remaining time from the seconds per example measured so far
  (points run `side_by_side` at once)."""

  def __init__(self, costs: Mapping[str, int], side_by_side: int = 1):
    self.costs, self.done_examples, self.seconds = dict(costs), 0, 0.0
    self.side_by_side = side_by_side

  def record(self, name: str, seconds: float) -> None:
    self.done_examples += self.costs.pop(name)
    self.seconds += seconds

  def skip(self, name: str) -> None:
    self.costs.pop(name)

  def text(self) -> str:
    if not self.done_examples:
      return "ETA after the first point"
    left = (self.seconds / self.done_examples * sum(self.costs.values())
            / self.side_by_side)
    return f"ETA {int(left // 60)} min {int(left % 60):02d} s"


def run_point(name: str, config, facts, point_dir: str, is_main: bool,
              max_updates: int = 0, placement: Optional[train.Placement] = None
              ) -> Tuple[str, dict]:
  """Trains one point to its end; returns its status and the outcome to record."""
  try:
    train.train_and_evaluate(config, point_dir, facts=facts, max_updates=max_updates,
                             placement=placement)
    return FINISHED, {}
  except errors.Diverged as e:
    return DIVERGED, {"update": e.update, "loss": e.loss, "grad_norm": e.grad_norm,
                      "learning_rate": e.learning_rate}
  except (KeyboardInterrupt, errors.Preempted):
    raise
  except errors.WorkdirBusy as e:  # Another runner has this point.
    if is_main:
      print(f"lbt.study: point {name} skipped: {cli.one_line(e)}", file=sys.stderr,
            flush=True)
    return RUNNING, {}
  except Exception as e:  # pylint: disable=broad-except
    if is_main:
      print(f"lbt.study: point {name} failed: {type(e).__name__}: {cli.one_line(e)}",
            file=sys.stderr, flush=True)
    return FAILED, {"error": f"{type(e).__name__}: {cli.one_line(e)}"}


def run_points(points: Mapping[str, object], workdir: str, *,
              only: Sequence[str] = (), shard: Tuple[int, int] = (0, 1),
              target_accuracy: Optional[float] = None,
              study_target: Optional[float] = None,
              study_id: Optional[str] = None,
              compilation_cache: str = "",
              devices_per_point: int = 0) -> Optional[Dict[str, str]]:
  """Runs the selected points of a study in `workdir/<point>/`.

  Every point is validated before the first one starts. Finished and diverged
  points are skipped; an interrupted one resumes from its checkpoint; a point
  that fails for another reason is recorded and the study goes on. Process 0
  writes each selected point's role.json before any trains (`write_roles`)
  and its row as it ends (the command writes the report).

  Args:
    points: the study, point name -> `lbt.studies.points.Point` (or a run
      config whose old name gives its role), in order.
    workdir: the study's directory.
    only: globs of point names to run (all when empty).
    shard: (I, N): run every N-th selected point starting at the I-th.
    target_accuracy: --target_accuracy; study_target: the study file's
      TARGET_ACCURACY (precedence: `lbt.studies.results.resolve_target`).
    study_id: the study file and argument; a directory created by another
      study is refused.
    compilation_cache: where JAX's persistent compilation cache is kept:
      "" the study directory's (a local one; else ~/.cache/lbt), "none" none.
    devices_per_point: 0: one point at a time on every device; d: points side
      by side, each on its own d devices of this host (a single-process run).

  Searched cells (a Point with a search) are validated here and left to
  `lbt.studies.search_runner`, which runs their trials.

  Returns:
    Point name -> finished / diverged / failed, for the points this call ran;
    None when the shard selects no point.
  """
  names = list(points)
  files.check_location(workdir, "--workdir")
  groups = device_groups(devices_per_point)
  facts = validate_points(points, workdir, devices_per_point)
  points = points_lib.study_points(points)
  plain = [n for n in select_points(names, only) if points[n].search is None]
  selected = select_points(plain, (), shard)
  is_main = jax.process_index() == 0
  if is_main:
    claim_directory(workdir, study_id, names, target_accuracy, study_target)
    write_roles(workdir, {n: points[n] for n in selected})
  if not selected:
    if is_main:
      print(f"lbt.study: shard {shard[0]}/{shard[1]} selects no point; the report is "
            "left as it is", flush=True)
    return None
  with programs.compilation_cache(cache_directory(workdir, compilation_cache)):
    return run_selected(points, facts, selected, workdir, is_main, groups)


def cache_directory(workdir: str, flag: str = "") -> Optional[str]:
  """The compilation cache's directory for --compilation_cache=`flag`."""
  if flag == "none":
    return None
  if flag:
    return flag
  if files.is_remote(workdir):  # JAX's cache reads and writes local files fastest.
    return os.path.expanduser(os.path.join("~", ".cache", "lbt", layout.COMPILATION_CACHE))
  return os.path.join(workdir, layout.COMPILATION_CACHE)


def claim_directory(workdir: str, study_id: Optional[str], names: Sequence[str],
                    target_accuracy: Optional[float], study_target: Optional[float]) -> None:
  """Writes study.json (study, point order, target), refusing a directory
  that another study created (exit 2, before anything trains)."""
  files.makedirs(workdir)
  info = results.study_info(workdir)
  owner = info.get("study")
  if study_id and owner and owner != study_id:
    raise ConfigError("--workdir", workdir, f"a directory of this study; it holds the "
                      f"study {owner} (its study.json): use another --workdir")
  target = results.resolve_target(target_accuracy, study_target,
                                  info.get("target_accuracy"))
  order = list(names) + [n for n in info.get("points", []) if n not in names]
  _write_json(os.path.join(workdir, layout.STUDY),
              {"study": study_id or owner, "points": order, "target_accuracy": target})


def run_selected(points, facts, selected: Sequence[str], workdir: str, is_main: bool,
                groups: Sequence[Sequence] = ()) -> Dict[str, str]:
  """Runs the selected points, one at a time on every device, or with
  `groups` (device_groups) side by side, each on a free group; returns their
  statuses."""
  eta = Eta({n: facts[n].examples for n in selected}, side_by_side=max(1, len(groups)))
  statuses, lock = {}, threading.Lock()

  def one(position: int, name: str, placement: Optional[train.Placement]) -> None:
    point_dir = os.path.join(workdir, name)
    status = agreed_status(point_dir)
    if status in (FINISHED, DIVERGED):
      with lock:
        statuses[name] = status
        eta.skip(name)
        if is_main:
          print(f"lbt.study: [{position}/{len(selected)}] {name}: {status}, skipped",
                flush=True)
      return
    if is_main:
      with lock:
        where = f" on {_device_names(placement.devices)}" if placement else ""
        print(f"lbt.study: [{position}/{len(selected)}] {name}{where} "
              f"({'resuming' if status == RUNNING else 'starting'}; {eta.text()})",
              flush=True)
      files.remove(os.path.join(point_dir, layout.OUTCOME))  # A failed point's retry.
    start = time.time()
    status, outcome = run_point(name, points[name].config, facts[name], point_dir, is_main,
                                placement=placement)
    with lock:
      eta.record(name, time.time() - start)
      statuses[name] = status
      if status != RUNNING and is_main:  # RUNNING: another runner's workdir, left alone.
        record_point(workdir, name, points[name].config, status,
                     {"wall_time_s": time.time() - start, **outcome})

  if not groups:
    for position, name in enumerate(selected, 1):
      one(position, name, None)
    return statuses
  free = queue.SimpleQueue()
  for group in groups:
    free.put(group)
  # Signals reach the main thread only: it holds the notice every point reads.
  with PreemptionNotice() as notice:
    def task(position: int, name: str) -> None:
      group = free.get()
      try:
        one(position, name, train.Placement(group, notice))
      finally:
        free.put(group)

    pool = concurrent.futures.ThreadPoolExecutor(len(groups), "lbt-point")
    futures = [pool.submit(task, p, n) for p, n in enumerate(selected, 1)]
    try:
      for future in futures:
        future.result()
    finally:  # A SIGTERM or Ctrl-C: the running points save; the others never start.
      pool.shutdown(wait=True, cancel_futures=True)
  return {n: statuses[n] for n in selected if n in statuses}


def device_groups(per_point: int) -> List[list]:
  """This host's devices in groups of `per_point`, one group per point
  running at once; [] for 0 (one point at a time on every device)."""
  if isinstance(per_point, bool) or not isinstance(per_point, int) or per_point < 0:
    raise ConfigError("--devices_per_point", per_point, "an int >= 0")
  if not per_point:
    return []
  if jax.process_count() > 1:
    raise ConfigError("--devices_per_point", per_point, "0 on a multi-process run: hosts "
                      "split a study with --shard=I/N, one lbt.study per host")
  devices = jax.local_devices()
  if len(devices) % per_point:
    raise ConfigError("--devices_per_point", per_point, f"0 or a divisor of this host's "
                      f"{len(devices)} devices")
  return [devices[i:i + per_point] for i in range(0, len(devices), per_point)]


def _device_names(devices) -> str:
  ids = [d.id for d in devices]
  return (f"device {ids[0]}" if len(ids) == 1 else f"devices {ids[0]}-{ids[-1]}")


def wait_for(workdir: str, names: Sequence[str], *, seconds: float, program: str) -> None:
  """Until every named point has ended (other shards run theirs); a failed
  one stops the waiting shard too, naming it: the rerun retries it."""
  while True:
    status = {n: agreed_status(os.path.join(workdir, n)) for n in names}
    failed = [n for n, s in status.items() if s == FAILED]
    if failed:
      error = results.read_outcome(os.path.join(workdir, failed[0])).get("error")
      raise errors.TrialFailed(f"trial {failed[0]} failed: {error}; fix the cause and rerun "
                               "the same command")
    pending = [n for n, s in status.items() if s not in (FINISHED, DIVERGED)]
    if not pending:
      return
    if jax.process_index() == 0:
      print(f"{program}: waiting for {len(pending)} trial(s) of other shards: "
            f"{', '.join(pending)}", flush=True)
    time.sleep(seconds)


def record_point(workdir: str, name: str, config, status: str, outcome: dict) -> None:
  """The point's outcome file (unless the trainer recorded it) and its row."""
  faults.moment("point_end")
  point_dir = os.path.join(workdir, name)
  if status != FINISHED:
    if not files.exists(os.path.join(point_dir, layout.CONFIG)):
      workdir_lib.write_config(config, point_dir)  # A point that failed early gets a row.
    _write_json(os.path.join(point_dir, layout.OUTCOME), {"status": status, **outcome})
  results.write_row(workdir, results.point_row(results.load_point(workdir, name),
                                               results.study_info(workdir)))
  faults.moment("row")
