"""Named moments of a run, at which a test stops it: a kill or a signal that
lands where it is meant to, not wherever a delay happens to end.

  LBT_FAULT=MOMENT:N[:SIGNAL]   the N-th time this process reaches MOMENT, it
                                sends itself SIGNAL: KILL (the default), TERM
                                or INT, e.g. LBT_FAULT=checkpoint:2,
                                LBT_FAULT=update:5:TERM
  LBT_FAULT_TRACE=PATH          appends "MOMENT N" to PATH at every moment
                                reached, so that a test can list the moments
                                of a run and sweep them

The code marks each moment with one call, `moment(name)`; MOMENTS says where
each lies. Both variables are read once, at import: with neither set, a
moment costs one test of a module global. N counts in this process only, so a
rerun that resumes counts from 1 again. A signal is sent to the process (not
the thread): it lands as a real one would, in the main thread's handler or,
with several processes, in JAX's preemption service. A bad LBT_FAULT is a
ConfigError at the first moment (`start`, for a command).
"""

import os
import signal
import threading
from typing import Dict, Optional, Tuple

from lbt.errors import ConfigError

# Every moment, in the order a run meets them, and where it lies.
MOMENTS = {
    "start": "a command starts, before its flags are parsed and JAX starts",
    "setup": "a run is set up (data, model, state restored), before its first update "
             "compiles and runs",
    "update": "an update's metrics, evaluation and checkpoint are done (before SIGTERM "
              "is looked at)",
    "checkpoint": "a checkpoint is complete on disk",
    "ended": "the update a run stops at (its end, target or cap) is done and "
             "checkpointed; its summary is not written",
    "write": "a file is written whole beside its target (FILE.PID.tmp), not yet renamed",
    "claim": "a study's runner: one more trial config of a wave is written (the wave's "
             "journal and roles are)",
    "point_end": "a study's point (or trial) has ended; its row is not yet written",
    "database": "results.sqlite is written whole beside itself, not yet renamed",
    "row": "a point's row of results.sqlite is in place",
    "limit": "lbt.limit: the summary is computed; limit.json is not yet written",
    "report": "a report's plots are written; its markdown is not",
}
SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "INT": signal.SIGINT}

_SPEC, _TRACE = os.environ.get("LBT_FAULT", ""), os.environ.get("LBT_FAULT_TRACE", "")
_ON = bool(_SPEC or _TRACE)
_counts: Dict[str, int] = {}
_lock = threading.Lock()
_trace_fd: Optional[int] = None


def parse(spec: str) -> Tuple[str, int, int]:
  """"MOMENT:N[:SIGNAL]" -> (moment, N, signal number)."""
  parts = spec.split(":")
  name, count = parts[0], parts[1] if len(parts) > 1 else ""
  signum = SIGNALS.get(parts[2] if len(parts) > 2 else "KILL")
  if (name not in MOMENTS or not count.isdigit() or int(count) < 1 or signum is None
      or len(parts) > 3):
    raise ConfigError("LBT_FAULT", spec, f"MOMENT:N[:SIGNAL] with N >= 1, SIGNAL one of "
                      f"{', '.join(SIGNALS)} and MOMENT one of {', '.join(MOMENTS)}")
  return name, int(count), signum


def moment(name: str) -> None:
  """Marks moment `name`; stops the process here when LBT_FAULT names this hit."""
  if _ON:
    _reached(name)


def _reached(name: str) -> None:
  global _trace_fd
  if name not in MOMENTS:
    raise ValueError(f"faults.moment({name!r}): not one of MOMENTS")
  target = parse(_SPEC) if _SPEC else None
  with _lock:
    count = _counts[name] = _counts.get(name, 0) + 1
    if _TRACE:
      if _trace_fd is None:
        _trace_fd = os.open(_TRACE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
      os.write(_trace_fd, f"{name} {count}\n".encode())
  if target and target[:2] == (name, count):
    os.kill(os.getpid(), target[2])
