"""How a run stops for a signal: SIGTERM (a preempted Cloud TPU VM) saves at
the next update, on every process alike; Ctrl-C stops at the end of an update.
Outside the training loop `exit_on_signals` applies: leave at once with one line."""

import contextlib
import os
import signal
import sys


EXIT_INTERRUPTED, EXIT_PREEMPTED = 130, 143


def exit_now(signum, frame) -> None:
  """Outside the training loop there is nothing to save: leave at once, before
  a KeyboardInterrupt can land inside JAX's or orbax's start-up or shut-down."""
  del frame
  name = "interrupted" if signum == signal.SIGINT else "SIGTERM"
  line = (f"lbt: {name} outside the training loop; nothing was lost: rerun the same "
          "command to resume from the last checkpoint.")
  tqdm = sys.modules.get("tqdm")
  # A run's progress bar is cleared first, so that the line stands alone.
  with (tqdm.tqdm.external_write_mode(file=sys.stderr) if tqdm else contextlib.nullcontext()):
    print(line, file=sys.stderr, flush=True)
    os._exit(EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_PREEMPTED)


def exit_on_signals() -> None:
  """SIGINT and SIGTERM end the process at once with 130 / 143 and one line.

  The command line installs this first thing; the training loop takes the
  signals over while it can save (`PreemptionNotice`).
  """
  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, exit_now)


class PreemptionNotice:
  """When to stop for a SIGTERM (what a preempted Cloud TPU VM gets).

  One process: a Python handler turns the signal into a flag, polled after
  every update. Several: JAX's preemption service (started by
  jax.distributed) catches SIGTERM on whichever host gets it, and all hosts
  agree on the next update at which to save, with no all-gather per update;
  `reached(done)` must then be called by every process at every update.
  Inside the loop Ctrl-C raises KeyboardInterrupt from `reached`, at the end
  of the update (the last checkpoint stays), never from inside a library (an
  orbax save cancelled half-way could swallow it); a second Ctrl-C leaves at
  once. Outside the loop the command line's handlers apply
  (`exit_on_signals`).
  """

  def __init__(self):
    self.requested = False
    self.interrupted = False
    self._previous = {}
    import jax  # pylint: disable=import-outside-toplevel
    self._multihost = jax.process_count() > 1

  def __enter__(self):
    handlers = {signal.SIGINT: self._interrupt}
    if not self._multihost:
      handlers[signal.SIGTERM] = self._handle
    try:
      for signum, handler in handlers.items():
        self._previous[signum] = signal.signal(signum, handler)
    except ValueError:  # Not the main thread: leave signals alone.
      pass
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def _interrupt(self, signum, frame):
    if self.interrupted:  # The second Ctrl-C: no waiting for the update.
      exit_now(signum, frame)
    self.interrupted = True

  def reached(self, done: int) -> bool:
    """Whether to save and stop for a SIGTERM after update `done`; raises
    KeyboardInterrupt after a Ctrl-C."""
    if self._multihost:
      from jax.experimental import multihost_utils
      stop = multihost_utils.reached_preemption_sync_point(done)
    else:
      stop = self.requested
    if self.interrupted:
      raise KeyboardInterrupt
    return stop

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
