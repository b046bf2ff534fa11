"""The one runner of every kind of study work: plain points, searched cells,
steps-to-target protocols and the full-batch study are all planners (pure
functions from what has ended to what to run next), and this module runs
them wave by wave with one rule for each of:

- ownership: a trial is run by the shard `owner(key, N)` names, from its key
  (its directory and name, or the group its planner puts it in) alone, so
  shards that plan at different moments never disagree on who runs a trial
  (`--shard=I/N`, one command per host); a steps-to-target protocol keeps the
  trials of one batch on one shard, so that each stops at the best count of
  those before it as when run alone;
- waiting: after its own trials, a shard polls the wave's others every
  WAIT_SECONDS until each has ended (a failed one is recorded, not waited on);
- resume: before a wave trains, it is written whole to DIR/journal.json
  (each trial's directory, name, config and role), then every trial's role
  and config; a rerun after a kill anywhere first finishes the journal's
  wave as planned, then plans again from what has ended;
- records: each trial's row goes to its directory's results.sqlite as it
  ends; each planner writes its decisions (a cell's choice, limit.json, the
  full-batch summary) when they are made, so that a report only reads.

A failed trial (an error other than divergence) is recorded and the study
goes on with what does not need it; work that needs it stops, the command
names it and exits 1, and the rerun retries it.

Points side by side (`devices_per_point=D`): on a host with several devices,
the runner trains one trial per group of D devices at once, each in a thread
with its own mesh; a trial's results are those of running it alone on D
devices.
"""

import abc
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import queue
import sys
import threading
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import ml_collections

from lbt import errors
from lbt.engine import train
from lbt.engine import workdir as workdir_lib
from lbt.io import cli, faults, files, layout
from lbt.io.preemption import PreemptionNotice
from lbt.studies import directory, results
from lbt.studies import points as points_lib
from lbt.studies.results import DIVERGED, FAILED, FINISHED, RUNNING

WAIT_SECONDS = 2.0  # how often a shard looks for the other shards' trials (a cheap read)
ENDED = (FINISHED, DIVERGED)


@dataclasses.dataclass(frozen=True)
class Task:
  """One trial to train: the directory its workdir lies in (its planner's),
  its name there, and its point (config and role)."""
  directory: str
  name: str
  point: points_lib.Point

  @property
  def workdir(self) -> str:
    return os.path.join(self.directory, self.name)


class Planner(abc.ABC):
  """What one kind of study work runs next. A planner's `plan` reads only
  what has ended in its directory and is deterministic given that, so every
  shard and every rerun plans the same trials."""

  directory: str = ""
  study_id: Optional[str] = None   # claimed for its directory when not the root's
  target: Optional[float] = None   # its directory's target, when it claims one

  @abc.abstractmethod
  def plan(self) -> List[Task]:
    """The trials to run next; [] when this planner's work is done."""

  def owns(self, task: Task) -> bool:
    """Whether a trial (one the journal holds, say) is this planner's."""
    return any(t.name == task.name and t.directory == task.directory for t in self.plan())

  def cap(self, task: Task) -> int:  # pylint: disable=unused-argument
    """The update a trial stops at when it starts now (0: its own end)."""
    return 0

  def group(self, task: Task) -> Optional[str]:  # pylint: disable=unused-argument
    """A name, within its directory, for trials that one shard runs together
    (None: the trial is its own)."""
    return None

  def progress(self) -> "WorkCount":
    """Trials ended and expected, and what the rest will train, for the
    progress line and its ETA."""
    return WorkCount(0, 0)

  def ended(self, task: Task) -> None:
    """Process 0, after a trial of this planner ended and was recorded."""

  def write_decisions(self) -> None:
    """Process 0, after each wave: writes what was decided so far."""

  def finish(self) -> None:
    """Process 0, once every planner's work is done: its last files."""


def owner(key: str, shards: int) -> int:
  """The shard that runs a trial, from its key alone."""
  return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % shards


def _key(root: str, task: Task, name: Optional[str] = None) -> str:
  relative = os.path.relpath(task.directory, root) if task.directory != root else ""
  name = name or task.name
  return f"{relative}/{name}" if relative else name


def shard_of(root: str, task: Task, planners: Sequence[Planner], shards: int) -> int:
  """The shard that runs `task`: `owner` of its key, or of its group's where
  its planner groups it."""
  planner = next((p for p in planners if p.owns(task)), None)
  group = planner.group(task) if planner else None
  return owner(_key(root, task, f"group:{group}" if group else None), shards)


@dataclasses.dataclass(frozen=True)
class WorkCount:
  """A planner's work so far: trials ended, trials expected in all (an
  estimate while its searches go on), and the training examples the trials
  still expected will process (an estimate too: the ETA weighs a trial by them)."""
  ended: int
  expected: int
  examples_left: float = 0.0


@dataclasses.dataclass
class Outcome:
  """What one call of `run` did: the status of each trial it ran (by key),
  the trials that failed (theirs or another shard's), and whether every
  planner's work is done."""
  statuses: Dict[str, str]
  failed: List[str]
  done: bool


def run(planners: Sequence[Planner], root: str, *, shard: Tuple[int, int] = (0, 1),
        groups: Sequence = (), program: str = "lbt.study") -> Outcome:
  """Runs every planner's work to its end in `root` (resuming what a kill
  left), wave by wave; returns what it did."""
  is_main = jax.process_index() == 0
  progress = StudyProgress(planners, max(1, len(groups)) * shard[1], program)
  statuses: Dict[str, str] = {}
  failed: Dict[str, None] = {}  # in the order they failed
  wave_number = 0
  while True:
    resumed = _journal_wave(root, planners, failed)
    wave = resumed or _plan_wave(planners, root, failed)
    if not wave:
      break
    wave_number += 1
    facts = _validate(wave)
    if is_main:
      _claim(root, wave, planners, journal=not resumed)
    mine = [t for t in wave if shard_of(root, t, planners, shard[1]) == shard[0]]
    progress.wave(wave_number, len(wave), len(mine))
    ran = _train(mine, facts, planners, is_main, groups, progress)
    statuses.update({_key(root, t): ran[t.name, t.directory] for t in mine})
    failed.update({_key(root, t): None for t in mine if ran[t.name, t.directory] == FAILED})
    failed.update(dict.fromkeys(wait_for([t for t in wave if t not in mine], root, program)))
    if is_main:
      for planner in planners:
        planner.write_decisions()
  done = not failed or not any(p.plan() for p in planners)
  if is_main and done:
    for planner in planners:
      planner.write_decisions()
      planner.finish()
  return Outcome(statuses, list(failed), done)


def _plan_wave(planners: Sequence[Planner], root: str, failed: Mapping[str, None]
               ) -> List[Task]:
  """Every planner's next trials, less those that failed in this run."""
  return [t for p in planners for t in p.plan() if _key(root, t) not in failed]


def _journal_wave(root: str, planners: Sequence[Planner], failed: Mapping[str, None]
                  ) -> List[Task]:
  """The journal's wave while a trial of it has not ended (a kill stopped
  it): those trials, as planned, that a planner of this command owns (so
  --only still selects); [] otherwise."""
  try:
    entries = json.loads(files.read_text(os.path.join(root, layout.JOURNAL)) or "[]")
  except ValueError:
    return []
  tasks = []
  for entry in entries:
    task = Task(os.path.join(root, entry["directory"]) if entry["directory"] else root,
                entry["name"], points_lib.Point(
                    ml_collections.ConfigDict(entry["config"]), entry["role"], None))
    if (_key(root, task) not in failed and any(p.owns(task) for p in planners)
        and directory.agreed_status(task.workdir) not in ENDED):
      tasks.append(task)
  return tasks


def _validate(wave: Sequence[Task]) -> Dict[Tuple[str, str], object]:
  """Every trial of the wave, before any trains; its facts by (name, directory)."""
  facts = {}
  for folder in dict.fromkeys(t.directory for t in wave):
    tasks = [t for t in wave if t.directory == folder]
    found = directory.validate_points({t.name: t.point for t in tasks}, folder)
    facts.update({(name, folder): value for name, value in found.items()})
  return facts


def _claim(root: str, wave: Sequence[Task], planners: Sequence[Planner],
           journal: bool = True) -> None:
  """The wave written whole to the journal (unless it came from there), then
  each directory claimed and each trial's role and config written, before
  any of it trains: a kill anywhere in the claim leaves the wave planned, and
  the rerun finishes it."""
  entries = [{"directory": "" if t.directory == root else os.path.relpath(t.directory, root),
              "name": t.name, "config": t.point.config.to_dict(), "role": t.point.role}
             for t in wave]
  files.makedirs(root)
  if journal:
    files.write_text_atomic(os.path.join(root, layout.JOURNAL), json.dumps(entries))
  for folder in dict.fromkeys(t.directory for t in wave):
    tasks = [t for t in wave if t.directory == folder]
    planner = next((p for p in planners if p.directory == folder and p.study_id), None)
    order = results.study_info(folder).get("points", []) if files.exists(folder) else []
    directory.claim_directory(folder, planner.study_id if planner else None,
                              order + [t.name for t in tasks if t.name not in order],
                              planner.target if planner else None, None)
    directory.write_roles(folder, {t.name: t.point for t in tasks}, "lbt")
    for task in tasks:
      if not files.exists(os.path.join(task.workdir, layout.CONFIG)):
        workdir_lib.write_config(task.point.config, task.workdir)
        faults.moment("claim")


def _train(tasks: Sequence[Task], facts, planners: Sequence[Planner], is_main: bool,
           groups: Sequence, progress: "StudyProgress") -> Dict[Tuple[str, str], str]:
  """Trains this shard's trials of a wave, one at a time on every device, or
  side by side on `groups`; returns their statuses by (name, directory)."""
  statuses, lock = {}, threading.Lock()

  def one(task: Task, placement: Optional[train.Placement]) -> None:
    status = directory.agreed_status(task.workdir)
    if status in ENDED:
      with lock:
        statuses[task.name, task.directory] = status
        progress.skipped(task, status)
      return
    planner = next((p for p in planners if p.owns(task)), None)
    cap = planner.cap(task) if planner else 0
    if is_main:
      started = files.exists(os.path.join(task.workdir, layout.METRICS))
      with lock:
        progress.starting(task, status == RUNNING and started, placement, cap)
      files.remove(os.path.join(task.workdir, layout.OUTCOME))  # A failed trial's retry.
    start = time.time()
    status, outcome = run_point(task, facts[task.name, task.directory], is_main, cap,
                                placement)
    examples = outcome.pop("examples", 0)
    with lock:
      statuses[task.name, task.directory] = status
      progress.ended(planner, time.time() - start, examples)
      if status != RUNNING and is_main:  # RUNNING: another runner's workdir, left alone.
        record_point(task, status, {"wall_time_s": time.time() - start, **outcome})
        if planner:
          planner.ended(task)

  if not groups:
    for task in tasks:
      one(task, None)
    return statuses
  free = queue.SimpleQueue()
  for group in groups:
    free.put(group)
  # Signals reach the main thread only: it holds the notice every trial reads.
  with PreemptionNotice() as notice:
    def work(task: Task) -> None:
      group = free.get()
      try:
        one(task, train.Placement(group, notice))
      finally:
        free.put(group)

    pool = concurrent.futures.ThreadPoolExecutor(len(groups), "lbt-point")
    futures = [pool.submit(work, t) for t in tasks]
    try:
      for future in futures:
        future.result()
    finally:  # A SIGTERM or Ctrl-C: the running trials save; the others never start.
      pool.shutdown(wait=True, cancel_futures=True)
  return statuses


def run_point(task: Task, facts, is_main: bool, max_updates: int = 0,
              placement: Optional[train.Placement] = None) -> Tuple[str, dict]:
  """Trains one trial to its end; returns its status and the outcome to record
  (with "examples": those it trained, for the ETA)."""
  try:
    summary = train.train_and_evaluate(task.point.config, task.workdir, facts=facts,
                                       max_updates=max_updates, placement=placement)
    return FINISHED, {"examples": summary.get("examples", 0)}
  except errors.Diverged as e:
    return DIVERGED, {"update": e.update, "loss": e.loss, "grad_norm": e.grad_norm,
                      "learning_rate": e.learning_rate,
                      "examples": (e.update or 0) * facts.batch_size}
  except (KeyboardInterrupt, errors.Preempted):
    raise
  except errors.WorkdirBusy as e:  # Another runner has this trial.
    if is_main:
      print(f"lbt: trial {task.name} skipped: {cli.one_line(e)}", file=sys.stderr,
            flush=True)
    return RUNNING, {}
  except Exception as e:  # pylint: disable=broad-except
    if is_main:
      print(f"lbt: trial {task.name} failed: {type(e).__name__}: {cli.one_line(e)}",
            file=sys.stderr, flush=True)
    return FAILED, {"error": f"{type(e).__name__}: {cli.one_line(e)}"}


def record_point(task: Task, status: str, outcome: dict) -> None:
  """The trial's outcome file (unless the trainer recorded it) and its row."""
  faults.moment("point_end")
  if status != FINISHED:
    if not files.exists(os.path.join(task.workdir, layout.CONFIG)):
      workdir_lib.write_config(task.point.config, task.workdir)  # Failed early: a row.
    directory.write_json(os.path.join(task.workdir, layout.OUTCOME),
                         {"status": status, **outcome})
  results.write_row(task.directory, results.point_row(
      results.load_point(task.directory, task.name), results.study_info(task.directory)))
  faults.moment("row")


def wait_for(tasks: Sequence[Task], root: str, program: str) -> List[str]:
  """Until every trial of `tasks` (other shards') has ended or failed;
  returns the keys of the failed ones."""
  said = None
  while True:
    status = {_key(root, t): directory.agreed_status(t.workdir) for t in tasks}
    failed = [k for k, s in status.items() if s == FAILED]
    pending = sorted(k for k, s in status.items() if s not in ENDED and k not in failed)
    if not pending:
      return failed
    if jax.process_index() == 0 and pending != said:
      print(f"{program}: waiting for {len(pending)} trial(s) of other shards: "
            f"{', '.join(pending)}", flush=True)
      said = pending
    time.sleep(WAIT_SECONDS)


class StudyProgress:
  """The whole study's progress: trials ended of those expected across every
  planner (counted at each wave, then by the trials that end), and an ETA.

  A trial's seconds are modelled as a + b * (the examples it trains), fitted
  to the trials ended here (`cost_model`), and summed over the trials every
  planner still expects (`WorkCount`), shared by the trials that run at once
  (devices side by side, times shards): a long trial at a large batch weighs
  what it costs, so the ETA converges as the study runs."""

  def __init__(self, planners: Sequence[Planner], at_once: int, program: str):
    self.planners, self.at_once, self.program = list(planners), at_once, program
    self.samples: List[Tuple[float, float]] = []  # (examples, seconds) of trials run here
    self.trials_left, self.examples_left = 0, 0.0
    self.done = self.expected = 0
    self.is_main = jax.process_index() == 0

  def _eta(self) -> str:
    if not self.samples:
      return "ETA after the first trial"
    per_trial, per_example = cost_model(self.samples)
    seconds = (per_trial * self.trials_left + per_example * self.examples_left) / self.at_once
    return f"ETA {int(seconds // 60)} min {int(seconds % 60):02d} s"

  def _say(self, text: str) -> None:
    if self.is_main:
      print(f"{self.program}: {text}", flush=True)

  def wave(self, number: int, size: int, mine: int) -> None:
    """Counts every planner's trials again (ended, expected, examples left)."""
    self.done = self.expected = self.trials_left = 0
    self.examples_left = 0.0
    for planner in self.planners:
      found = planner.progress()
      self.done += found.ended
      self.expected += max(found.expected, found.ended)
      self.trials_left += max(found.expected - found.ended, 0)
      self.examples_left += found.examples_left
    self._say(f"wave {number}: {size} trial(s), {mine} of them this shard's; "
              f"{self.done} of about {self.expected} trials ended; {self._eta()}")

  def skipped(self, task: Task, status: str) -> None:
    self._say(f"{task.name}: {status}, skipped")

  def starting(self, task: Task, resuming: bool, placement, cap: int) -> None:
    where = ""
    if placement is not None:
      ids = [d.id for d in placement.devices]
      where = f" on device {ids[0]}" if len(ids) == 1 else f" on devices {ids[0]}-{ids[-1]}"
    stop = f"; stops at update {cap}, the best trial of its batch" if cap else ""
    self._say(f"[{self.done + 1}/~{max(self.expected, self.done + 1)}] {task.name}{where} "
              f"({'resuming' if resuming else 'starting'}{stop}; {self._eta()})")

  def ended(self, planner: Optional[Planner], seconds: float, examples: float) -> None:
    self.done += 1
    self.samples.append((float(examples), seconds))
    if planner is not None:
      self.trials_left = max(self.trials_left - 1, 0)
      self.examples_left = max(self.examples_left - examples, 0.0)


def cost_model(samples: Sequence[Tuple[float, float]]) -> Tuple[float, float]:
  """(a, b) with seconds = a + b * examples, least squares over (examples,
  seconds) samples, both at least 0 (a alone when the examples do not vary)."""
  n = len(samples)
  sx = sum(x for x, _ in samples)
  sy = sum(y for _, y in samples)
  sxx = sum(x * x for x, _ in samples)
  sxy = sum(x * y for x, y in samples)
  det = n * sxx - sx * sx
  if det <= 1e-12 * max(1.0, n * sxx):
    return sy / n, 0.0
  b = (n * sxy - sx * sy) / det
  a = (sy - b * sx) / n
  if a < 0:
    return 0.0, sxy / sxx
  if b < 0:
    return sy / n, 0.0
  return a, b
