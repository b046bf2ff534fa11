"""The exceptions a user sees, each bound to its exit status and its one line.

`lbt.io.cli.run` prints `LINE.format(message)` and exits with `EXIT_STATUS` for
any exception of these classes (or their subclasses); anything else is a bug
and keeps its traceback.
"""

from typing import Optional


class ConfigError(ValueError):
  """Bad user input, found before any compute starts.

  The message always names the field, the value given and what is allowed, so
  the command line can print it as one line and exit non-zero.
  """

  EXIT_STATUS, LINE = 2, "lbt: error: {}"

  def __init__(self, field: str, value=None, allowed: str = None):
    self.field, self.value, self.allowed = field, value, allowed
    if allowed is None:  # Rebuilt from its message: unpickling passes self.args.
      super().__init__(field)
    else:
      super().__init__(f"{field}={value!r} is invalid: {allowed}")


class WriteError(RuntimeError):
  """A file of the run could not be written (read-only, disk full, no permission).

  What was complete before stays as it was; the command line prints the one
  line and exits 4.
  """

  EXIT_STATUS, LINE = 4, "lbt: error: {}"

  def __init__(self, path: str, reason: str, what: Optional[str] = None,
               note: Optional[str] = None):
    self.path, self.reason, self.what, self.note = path, reason, what, note
    subject = f"{what} ({path})" if what else path
    super().__init__(f"could not write {subject}: {reason}"
                     f"{'; ' + note if note else ''}")

  def __reduce__(self):
    return type(self), (self.path, self.reason, self.what, self.note)


class WorkdirBusy(ConfigError):
  """Another process holds the workdir's lease (exit 2: nothing was touched)."""


class Diverged(RuntimeError):
  """A non-finite loss, gradient or parameter appeared; the run stopped (exit 3)."""

  EXIT_STATUS, LINE = 3, "lbt: {}"

  def __init__(self, update: int, loss: float, grad_norm: float,
               learning_rate: float, last_checkpoint):
    self.update, self.loss, self.learning_rate = update, loss, learning_rate
    self.grad_norm, self.last_checkpoint = grad_norm, last_checkpoint
    super().__init__(
        f"training diverged at update {update}: loss={loss:.6g}, "
        f"grad_norm={grad_norm:.6g}, learning_rate={learning_rate:.6g}; "
        "the state before it is not saved; the last good checkpoint is "
        f"{'update ' + str(last_checkpoint) if last_checkpoint is not None else 'none'}")

  def __reduce__(self):
    return type(self), (self.update, self.loss, self.grad_norm, self.learning_rate,
                        self.last_checkpoint)


class TrialFailed(RuntimeError):
  """A trial of lbt.limit failed for a reason other than divergence (exit 1)."""

  EXIT_STATUS, LINE = 1, "lbt: error: {}"


class Preempted(RuntimeError):
  """SIGTERM arrived; a checkpoint was written at the next update boundary (exit 143)."""

  EXIT_STATUS, LINE = 143, "lbt: {}; rerun the same command to resume."


def exit_status(error: BaseException) -> Optional[int]:
  """The exit status bound to `error`'s class, or None for an unexpected one."""
  if isinstance(error, KeyboardInterrupt):
    return 130
  return getattr(type(error), "EXIT_STATUS", None)


def exit_line(error: BaseException) -> str:
  """The one line printed for `error` (see `exit_status`)."""
  if isinstance(error, KeyboardInterrupt):
    return "lbt: interrupted; rerun the same command to resume from the last checkpoint."
  return type(error).LINE.format(" ".join(str(error).split()))
