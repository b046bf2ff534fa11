"""How a run stops for a signal: SIGTERM (a preempted Cloud TPU VM) saves at
the next update, on every process alike; Ctrl-C stops at the end of an update.
Outside the training loop `lbt.cli.exit_on_signals` applies."""

import signal

import jax

from lbt import cli


class Preempted(RuntimeError):
  """SIGTERM arrived; a checkpoint was written at the next update boundary."""


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
  (`cli.exit_on_signals`).
  """

  def __init__(self):
    self.requested = False
    self.interrupted = False
    self._previous = {}
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
      cli.exit_now(signum, frame)
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
