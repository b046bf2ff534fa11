"""Where a whole study's wall time goes: compile, train, evaluate and the rest.

  python benchmarks/study.py [--study=configs/studies/fashion_mnist.py]
      [--devices=N --devices_per_point=D] [--code=DIR] [--json=FILE] [--overall]

Runs a study (`lbt.studies.work.run_study`, then its report) on a fresh
directory in this process, as `python -m lbt.study` would, with timers around its stages (the study itself is
unchanged): each update is timed up to its finished result
(`jax.block_until_ready`), each evaluation of a split, and every compilation
through `jax.monitoring` (tracing, lowering, XLA's compile and loads from the
persistent compilation cache; their union in time is "compile", and is taken
out of the stage it happened in). "Other" is the rest: set-up, data, metrics,
checkpoints, the report. It prints the table, the number of XLA compilations
and of persistent-cache hits, and a digest of the report's accuracy table, so
that two versions of the code can be compared point for point.

Waiting for each update costs the loop the overlap of the host's work with
the device's, so `--overall` times the study as it runs: the wall, compile
(from `jax.monitoring`, which does not wait) and the rest, without the split.

`--code=DIR` imports lbt and the configs from another checkout (run_all.py's
`--before=REV` gives it a worktree of an earlier commit) with this script's
timers. `--devices=N` forces N emulated CPU devices (set before JAX starts);
`--devices_per_point=D` runs points side by side on sub-meshes of D devices
(code that has it).
"""

import argparse
import collections
import hashlib
import inspect
import json
import os
import sys
import tempfile
import threading
import time


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--study", default="configs/studies/fashion_mnist.py")
  parser.add_argument("--code", default=os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  parser.add_argument("--devices", type=int, default=0)
  parser.add_argument("--devices_per_point", type=int, default=0)
  parser.add_argument("--json", default="")
  parser.add_argument("--overall", action="store_true",
                      help="do not wait for each update: wall and compile only")
  return parser.parse_args()


ARGS = parse_args()
if ARGS.devices:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={ARGS.devices}")
CODE = os.path.abspath(ARGS.code)
sys.path.insert(0, CODE)
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from benchmarks import timing  # noqa: E402

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration",
                  "/jax/compilation_cache/cache_retrieval_time_sec")


def union(intervals):
  """Total length of a set of (start, end) intervals, overlaps counted once."""
  total, reach = 0.0, float("-inf")
  for start, end in sorted(intervals):
    if end > reach:
      total += end - max(start, reach)
      reach = end
  return total


class Timeline:
  """(start, end) intervals per stage, from every thread."""

  def __init__(self):
    self.stages = collections.defaultdict(list)
    self.counts = collections.Counter()
    self.compile_seconds = collections.Counter()  # per COMPILE_EVENTS name
    self.lock = threading.Lock()

  def add(self, stage, start, end):
    with self.lock:
      self.stages[stage].append((start, end))

  def on_duration(self, event, duration, **kwargs):
    del kwargs
    if event in COMPILE_EVENTS:
      end = time.perf_counter()
      self.add("compile", end - duration, end)
      with self.lock:
        self.compile_seconds[event] += duration
      if event == COMPILE_EVENTS[2]:
        self.counts["XLA compilations"] += 1

  def on_event(self, event, **kwargs):
    del kwargs
    if event == "/jax/compilation_cache/cache_hits":  # Timed as a compile too.
      self.counts["persistent-cache hits"] += 1
      self.counts["XLA compilations"] -= 1


def instrument(timeline, programs):
  """Wraps the update and evaluation in place (lbt.engine.programs of either version)."""
  compile_update, evaluate = programs.compile_update, programs.evaluate

  def timed_compile_update(*args, **kwargs):
    update = compile_update(*args, **kwargs)

    def run(*a, **k):
      start = time.perf_counter()
      out = jax.block_until_ready(update(*a, **k))
      timeline.add("train", start, time.perf_counter())
      timeline.counts["updates"] += 1
      return out
    run.programs = getattr(update, "programs", None)
    return run

  def timed_evaluate(*args, **kwargs):
    start = time.perf_counter()
    out = evaluate(*args, **kwargs)
    timeline.add("evaluate", start, time.perf_counter())
    return out

  programs.compile_update, programs.evaluate = timed_compile_update, timed_evaluate


def _study_runner(study):
  """The code's run-a-study-then-its-report, returning trial -> status: the
  one runner's (`lbt.studies.work`), or an older checkout's `lbt.study.run_study`."""
  try:
    from lbt.studies import work  # pylint: disable=import-outside-toplevel
  except ImportError:
    return study.run_study
  from lbt.reports import study_report  # pylint: disable=import-outside-toplevel

  def run_study(points, workdir, **kwargs):
    outcome = work.run_study(points, workdir, **kwargs)
    study_report.build_report(workdir)
    return outcome.statuses

  run_study.__signature__ = inspect.signature(work.run_study)
  return run_study


def main() -> None:
  from lbt.io import cli
  from lbt.engine import programs
  from lbt.reports import study_report
  from lbt import study
  timeline = Timeline()
  jax.monitoring.register_event_duration_secs_listener(timeline.on_duration)
  jax.monitoring.register_event_listener(timeline.on_event)
  if not ARGS.overall:
    instrument(timeline, programs)
  points, constants = cli.load_python_file(os.path.join(CODE, ARGS.study), flag="--study",
                                           function="get_study",
                                           constants=("TARGET_ACCURACY", "get_limits"))
  kwargs = {"limits": study.study_limits(ARGS.study, constants["get_limits"])}
  run_study = _study_runner(study)
  if ARGS.devices_per_point:
    if "devices_per_point" not in inspect.signature(run_study).parameters:
      sys.exit("study: this code has no --devices_per_point")
    kwargs["devices_per_point"] = ARGS.devices_per_point
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    statuses = run_study(points, workdir, study_target=constants["TARGET_ACCURACY"],
                         study_id=ARGS.study, **kwargs)
    wall = time.perf_counter() - start
    table = study_report.main_table(workdir)
  compile_union = union(timeline.stages["compile"])
  rows = {"compile": compile_union}
  if ARGS.overall:
    rows["train, evaluate and other"] = wall - compile_union
  else:
    for stage in ("train", "evaluate"):
      intervals = timeline.stages[stage]
      # The stage's time outside any compile (threads overlap: unions only).
      rows[stage] = union(intervals + timeline.stages["compile"]) - compile_union
    rows["other (set-up, data, metrics, checkpoints, report)"] = wall - sum(rows.values())
  digest = hashlib.sha256(table.encode()).hexdigest()[:12]
  finished = sum(s == "finished" for s in statuses.values())
  print(f"study: {timing.machine()}; {jax.device_count()} device(s)"
        + (f", {ARGS.devices_per_point} per point" if ARGS.devices_per_point else ""))
  print(f"{ARGS.study}: {len(statuses)} points ({finished} finished), "
        + (f"{timeline.counts['updates']} updates, each waited for"
         if not ARGS.overall else "updates not waited for") + f"; code {CODE}")
  print("| stage | seconds | % of wall |")
  print("|---|---|---|")
  for name, seconds in rows.items():
    print(f"| {name} | {seconds:.1f} | {100 * seconds / wall:.1f} |")
  print(f"| wall | {wall:.1f} | 100 |")
  print(f"\nXLA compilations: {timeline.counts['XLA compilations']}; persistent-cache "
        f"hits: {timeline.counts['persistent-cache hits']}; accuracy table digest {digest}")
  kinds = dict(zip(COMPILE_EVENTS, ("tracing", "lowering to MLIR", "XLA compile",
                                    "persistent-cache loads")))
  print("compile by kind (seconds, summed over threads): " + ", ".join(
      f"{kinds[event]} {timeline.compile_seconds[event]:.1f}" for event in COMPILE_EVENTS))
  if ARGS.json:
    with open(ARGS.json, "w") as f:
      json.dump({"wall": wall, **rows, **timeline.counts, "digest": digest,
                 "compile_by_kind": {kinds[e]: timeline.compile_seconds[e]
                                     for e in COMPILE_EVENTS},
                 "points": len(statuses), "table": table}, f, indent=1)


if __name__ == "__main__":
  main()
