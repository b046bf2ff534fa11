"""Kills and signals at named moments of a command (lbt.io.faults), for the
tests that stop a run and rerun it: where each one lands is chosen, not timed.

`sweep` runs one command again and again on one directory, each run stopped
at the next moment of a list, so that every kill is followed by a rerun (the
one the next kill stops); the test then reruns it to its end and compares.
"""

import os
import signal
import subprocess
import sys
from typing import Callable, Dict, List, Optional, Sequence

from lbt.io import layout, metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The exit status of a run stopped by each signal of lbt.io.faults.
STATUS = {"KILL": -signal.SIGKILL, "TERM": 143, "INT": 130}


def env(fault: Optional[str] = None, trace: Optional[str] = None) -> dict:
  """The environment of a run stopped at `fault` (LBT_FAULT), tracing its
  moments to the file `trace` (LBT_FAULT_TRACE)."""
  values = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  values.pop("LBT_FAULT", None)
  values.pop("LBT_FAULT_TRACE", None)
  if fault:
    values["LBT_FAULT"] = fault
  if trace:
    values["LBT_FAULT_TRACE"] = trace
  return values


def run(command: Sequence[str], fault: Optional[str] = None, trace: Optional[str] = None,
        timeout: float = 600) -> subprocess.CompletedProcess:
  return subprocess.run(list(command), cwd=REPO, env=env(fault, trace),
                        capture_output=True, text=True, timeout=timeout)


def moments(trace: str) -> List[str]:
  """The moments a traced run reached, as "MOMENT N" in order."""
  if not os.path.exists(trace):
    return []
  with open(trace) as f:
    return f.read().split("\n")[:-1]


def stop_at(command: Sequence[str], fault: str, trace: str) -> subprocess.CompletedProcess:
  """Runs `command` stopped at `fault` ("MOMENT:N[:SIGNAL]"); asserts that it
  stopped there: the exit status of its signal, and, for a kill, that the
  moment was the last one it reached."""
  if os.path.exists(trace):
    os.remove(trace)
  result = run(command, fault, trace)
  name, count, *signame = fault.split(":")
  reached = moments(trace)
  assert f"{name} {count}" in reached, (
      f"{fault}: not reached (the run reached {reached[-3:]}, exit {result.returncode}); "
      f"{result.stdout[-1500:]}{result.stderr[-1500:]}")
  want = STATUS[(signame or ["KILL"])[0]]
  assert result.returncode == want, (fault, result.returncode, result.stderr[-3000:])
  if want == STATUS["KILL"]:
    assert reached[-1] == f"{name} {count}", (fault, reached[-3:])
  return result


def sweep(command: Sequence[str], faults: Sequence[str], trace: str,
          after_each: Callable[[str], None] = lambda fault: None) -> None:
  """Stops `command` at each of `faults` in turn, each run resuming what the
  previous one left; `after_each(fault)` checks the directory after each."""
  for fault in faults:
    stop_at(command, fault, trace)
    after_each(fault)


def python(module: str, *args: str) -> List[str]:
  return [sys.executable, "-m", module, *args]


def endings(workdir: str) -> Dict[str, dict]:
  """How each ended run of a study directory (a point, a trial) ended, from
  its metrics.jsonl: its crossings, why and where it stopped or diverged, and
  the updates it logged (each once)."""
  ended = {}
  protocols = os.path.join(workdir, layout.LIMITS)  # a study's steps-to-target trials
  for label in sorted(os.listdir(protocols) if os.path.isdir(protocols) else ()):
    ended.update({f"{layout.LIMITS}/{label}/{name}": value for name, value in
                  endings(os.path.join(protocols, label)).items()})
  for name in sorted(os.listdir(workdir) if os.path.isdir(workdir) else ()):
    if not os.path.isfile(os.path.join(workdir, name, layout.METRICS)):
      continue
    records = metrics.read_jsonl(os.path.join(workdir, name))
    last = {r["kind"]: r for r in records}
    if "summary" in last or "diverged" in last:
      ended[name] = {
          "targets": [(r["step"], r["value"]) for r in records if r["kind"] == "target"],
          "stopped_by": last.get("summary", {}).get("stopped_by"),
          "updates": last.get("summary", {}).get("num_train_steps"),
          "diverged_at": last.get("diverged", {}).get("step"),
          "logged": [r["step"] for r in records if r["kind"] == "train"]}
  return ended


def assert_ended_as(workdir: str, reference: str, fault: str) -> None:
  """Every run that has ended in `workdir` ended as in `reference`."""
  got, want = endings(workdir), endings(reference)
  assert got == {name: want.get(name) for name in got}, f"after the kill at {fault}"
