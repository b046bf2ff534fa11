"""The run's log file: library logging and tracebacks to WORKDIR/lbt.log, not the console.

lbt's own console lines are prints and stay on the console. In a remote
workdir (no append) the log is written to a local file and copied up
(`CopiedLog`).
"""

import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
from typing import Iterator

from etils import epath

from lbt.io import layout
from lbt.io import files

# How often the log of a remote workdir is copied up while records arrive.
LOG_COPY_SECONDS = 30.0

class _LogFile(logging.FileHandler):
  """A log that never complains on the console: when its own disk is full the
  record is dropped (the run's one-line error already names the cause)."""

  def handleError(self, record):
    del record


class CopiedLog(_LogFile):
  """The log of a remote workdir: appended to a local temporary file that
  continues the workdir's log, and copied whole to `path` at most every
  LOG_COPY_SECONDS as records arrive, and at close. If the last copy fails,
  the local file stays and its path is printed."""

  def __init__(self, path: str):
    self.remote_path = path
    earlier = epath.Path(path).read_bytes() if epath.Path(path).exists() else b""
    fd, local = tempfile.mkstemp(prefix="lbt-", suffix=".log")
    with os.fdopen(fd, "wb") as f:
      f.write(earlier)
    super().__init__(local)
    self._copied, self._done = time.time(), False

  def _copy(self) -> None:
    self._copied = time.time()
    self.flush()
    with open(self.baseFilename, "rb") as f:
      epath.Path(self.remote_path).write_bytes(f.read())

  def emit(self, record) -> None:
    super().emit(record)
    if time.time() - self._copied >= LOG_COPY_SECONDS:
      with contextlib.suppress(Exception):  # Like a full disk: the record stays local.
        self._copy()

  def close(self) -> None:
    super().close()
    if self._done:  # logging.shutdown closes it again at exit.
      return
    self._done = True
    try:
      self._copy()
    except Exception as e:  # pylint: disable=broad-except
      print(f"lbt: the log stays in {self.baseFilename}: could not copy it to "
            f"{self.remote_path}: {files.reason(e)}", file=sys.stderr, flush=True)
      return
    os.remove(self.baseFilename)


def _is_console(handler: logging.Handler) -> bool:
  stream = getattr(handler, "stream", None)
  return stream in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__) or (
      type(handler).__name__ == "ABSLHandler")


@contextlib.contextmanager
def capture_logs(workdir: str, level: int = logging.INFO,
                 name: str = layout.LOG) -> Iterator[str]:
  """Sends Python logging (orbax's and absl's tracebacks among it) to
  WORKDIR/lbt.log instead of the console for the block; yields the log's path.

  Exceptions that would print themselves from other threads or from native
  callbacks (tensorstore's "Event loop is closed" after a failed save) go to
  the log too. lbt's own console lines are prints and stay on the console.
  Processes other than 0 of a multi-process run pass their own `name`
  (e.g. "lbt.process_3.log"). In a remote workdir (no append) the log is
  written to a local file and copied into the workdir now and then and at
  the end (`CopiedLog`).
  """
  if files.is_remote(workdir):
    path = f"{workdir.rstrip('/')}/{name}"
    with files.writing(path, "the log file"):
      handler = CopiedLog(path)
  else:
    path = os.path.join(os.path.abspath(workdir), name)
    files.makedirs(os.path.dirname(path))
    with files.writing(path, "the log file"):
      handler = _LogFile(path)
  handler.setFormatter(logging.Formatter(
      "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"))
  handler.setLevel(level)
  handler.addFilter(_OwnRecords(threading.get_ident()))
  _CONSOLE.take()
  root = logging.getLogger()
  root.addHandler(handler)
  try:
    yield path
  finally:
    root.removeHandler(handler)
    handler.close()
    _CONSOLE.give_back()


class _OwnRecords(logging.Filter):
  """With several runs in one process (lbt.study --devices_per_point), each
  log takes the records of its own thread and of threads that hold no log
  (orbax's and JAX's workers): never another run's."""

  def __init__(self, owner: int):
    super().__init__()
    self.owner = owner

  def filter(self, record) -> bool:
    return record.thread == self.owner or record.thread not in _CONSOLE.holders


class _Console:
  """The process-wide part of `capture_logs`, shared by the runs capturing at
  once: the first mutes the console's logging handlers and routes uncaught
  exceptions to the log, the last puts both back."""

  def __init__(self):
    self.lock, self.holders, self.saved = threading.Lock(), [], None

  def take(self) -> None:
    with self.lock:
      self.holders.append(threading.get_ident())
      if len(self.holders) > 1:
        return
      root = logging.getLogger()
      muted = [(h, h.level) for h in root.handlers if _is_console(h)]
      for h, _ in muted:
        h.setLevel(logging.CRITICAL + 1)
      self.saved = muted, (sys.excepthook, threading.excepthook, sys.unraisablehook)
      log = logging.getLogger("lbt.uncaught")
      sys.excepthook = lambda kind, value, tb: log.error(
          "Uncaught exception", exc_info=(kind, value, tb))
      threading.excepthook = lambda args: log.error(
          "Uncaught exception in thread %s", getattr(args.thread, "name", "?"),
          exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
      sys.unraisablehook = lambda args: log.error(
          "Exception ignored in %r", args.object,
          exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

  def give_back(self) -> None:
    with self.lock:
      self.holders.remove(threading.get_ident())
      if self.holders:
        return
      muted, hooks = self.saved
      sys.excepthook, threading.excepthook, sys.unraisablehook = hooks
      for h, previous in muted:
        h.setLevel(previous)


_CONSOLE = _Console()
