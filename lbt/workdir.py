"""What a process may do to a workdir: hold it alone, write into it, log into it.

**One trainer per workdir.** Two trainers on one workdir corrupt it silently
(one's config, the other's checkpoints, both in metrics.jsonl), so process 0
holds `WORKDIR/lbt.lock`, a lease, for the whole run, and a second trainer (or
a study runner at the same point) refuses before writing anything, naming the
holder. A lease file works unchanged on a local disk and on a shared
filesystem (NFS, Filestore), where `flock`/`fcntl` locks are unreliable:

- Acquire: `open(O_CREAT | O_EXCL)`, atomic also over NFSv3+. The lease holds
  host, pid, purpose, start and heartbeat times, and what makes the pid
  meaningful on its host (boot id, pid namespace, the pid's start time).
- Heartbeat: a daemon thread rewrites it every `heartbeat_s` (temporary file,
  `os.replace`) after checking it is still its own; if not, the lease is lost
  and `Lease.check()` raises.
- Stale: a heartbeat older than `timeout_s`, or a holder gone from this very
  host (same boot and pid namespace; pid dead or reused). A taker moves it
  aside with an atomic `os.rename` to a name of its own (of several takers only
  one finds the file), checks that what moved is the lease it judged stale
  (inode, mtime, bytes), else puts it back with `os.link` (which never
  replaces a file), then acquires as usual.
- Re-entrant in one process: the study runner holds a point's workdir and the
  trainer it calls takes the same lease again.
Hosts' clocks must agree to well within `timeout_s` (60 s; NTP gives ms). The
heartbeat's check-then-replace is not one atomic step: a holder frozen for
longer than the timeout exactly between the two would overwrite its
successor's lease; the successor's next heartbeat then finds it lost and
stops, so one writer remains.

**Remote workdirs** (`gs://BUCKET/DIR`, `is_remote`) are written through
`etils.epath` (`path`); an object store has no append, no atomic rename and no
O_EXCL, so `lbt.remote` holds what differs: the lease maps onto object
preconditions, a true compare-and-swap (acquire = create with
`if_generation_match=0`; heartbeat and take-over = rewrite with
`if_generation_match=<the generation read>`; release = delete with ours), the
log is kept in a local file and copied up, and one object write replaces the
temporary file and rename of `write_text_atomic` (an object is replaced whole
or not at all).

**Every write failure is one line.** Read-only directories, full disks and
missing permissions raise `WriteError(path, reason)`, whose reason keeps the
operating system's text whole ("No space left on device (ENOSPC)"); the
command line maps it to exit 4. Library tracebacks go to `WORKDIR/lbt.log`
(`capture_logs`), not to the console.
"""

import contextlib
import errno
import json
import logging
import os
import re
import socket
import sqlite3
import sys
import threading
import time
import uuid
from typing import Iterator, Optional

from etils import epath

from lbt.errors import ConfigError

LOCK_FILE = "lbt.lock"
LOG_FILE = "lbt.log"
# Operating-system texts a library may bury in its own message (tensorstore does).
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                 errno.ENOTDIR, errno.EISDIR, errno.EIO, errno.EFBIG, errno.ENAMETOOLONG)


class WriteError(RuntimeError):
  """A file of the run could not be written (read-only, disk full, no permission).

  What was complete before stays as it was; the command line prints the one
  line and exits 4.
  """

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


def reason(error: BaseException) -> str:
  """The cause of a failed write, with the operating system's text whole.

  Looks through the exception and its causes for an errno (an OSError's, or
  tensorstore's `os_error_code='28'` inside a message), then for a known
  errno text inside a message; else the first line of the message, uncut.
  """
  chain, seen = [], set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    chain.append(error)
    error = error.__cause__ or error.__context__
  for e in chain:
    if isinstance(e, OSError) and e.errno:
      return _errno_text(e.errno)
  for e in chain:
    match = re.search(r"os_error_code='?(\d+)", str(e))
    if match:
      return _errno_text(int(match.group(1)))
    for code in _WRITE_ERRNOS:
      if os.strerror(code).lower() in str(e).lower():
        return _errno_text(code)
  first = chain[0]
  text = " ".join(str(first).split())
  return f"{type(first).__name__}: {text}" if text else type(first).__name__


def _errno_text(code: int) -> str:
  return f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"


@contextlib.contextmanager
def writing(path: str, what: Optional[str] = None, note: Optional[str] = None):
  """Turns a failed write inside the block (OSError, or sqlite's
  OperationalError: read-only database, disk full) into a `WriteError`."""
  try:
    yield
  except (OSError, sqlite3.OperationalError) as e:
    raise WriteError(path, reason(e), what, note) from None


# ---- local and remote paths ----

def is_remote(p) -> bool:
  """True for an object-store path such as gs://BUCKET/DIR (any "scheme://")."""
  return "://" in os.fspath(p)


def path(p) -> epath.Path:
  """`p` as an `etils.epath.Path`: a local path made absolute, a remote one as is."""
  return epath.Path(p if is_remote(p) else os.path.abspath(p))


def exists(p: str) -> bool:
  return path(p).exists() if is_remote(p) else os.path.exists(p)


def read_text(p: str) -> Optional[str]:
  """The text of file `p`, or None if there is none (local or remote)."""
  try:
    return path(p).read_text()
  except FileNotFoundError:
    return None


def remove(p: str) -> None:
  """Deletes file `p` if it exists (local or remote)."""
  path(p).unlink(missing_ok=True)


def check_location(p: str, field: str = "--workdir") -> None:
  """Refuses a workdir lbt cannot write, before anything is created.

  A local path passes (the caller checks it is no file). gs://BUCKET/DIR
  passes where this Python can reach it: epath's gs:// backend (gcsfs) and
  google-cloud-storage (orbax deletes old checkpoints with it; the lease takes
  its preconditions) installed, `pip install 'lbt[gcs]'`, and the bucket
  answering. Other schemes are refused: orbax writes checkpoint arrays
  (tensorstore) to local paths and gs:// only.
  """
  if not is_remote(p):
    return
  allowed = "a local or shared-filesystem directory, or gs://BUCKET/DIR"
  scheme, _, rest = p.partition("://")
  if scheme != "gs" or not rest.split("/")[0]:
    raise ConfigError(field, p, f"{allowed} (orbax checkpoints to no other object store)")
  try:
    from google.cloud import storage  # pylint: disable=unused-import,import-outside-toplevel
    path(p).exists()
  except ImportError as e:
    raise ConfigError(field, p, f"{allowed}, with gs:// support installed: pip install "
                      f"'lbt[gcs]' (gcsfs, google-cloud-storage; {e})") from None
  except Exception as e:  # pylint: disable=broad-except
    text = " ".join(str(e).split())[:200]
    raise ConfigError(field, p, f"{allowed} this machine can reach "
                      f"({type(e).__name__}: {text})") from None


def makedirs(path: str) -> None:
  """`os.makedirs(path, exist_ok=True)`, failing with a WriteError."""
  with writing(path, "the directory"):
    if is_remote(path):
      epath.Path(path).mkdir(parents=True, exist_ok=True)
    else:
      os.makedirs(path, exist_ok=True)


def write_text_atomic(path: str, text: str) -> None:
  """Writes `text` to `path` whole or not at all: a temporary file in the same
  directory, fsynced, then renamed over `path`. A failure (disk full, read-only)
  leaves the previous file untouched and raises WriteError. On a remote path,
  one object write (an object is replaced whole or not at all)."""
  if is_remote(path):
    with writing(path):
      epath.Path(path).write_text(text)
    return
  tmp = f"{path}.{os.getpid()}.tmp"
  try:
    with writing(path):
      with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, path)
  except WriteError:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


# ---- the lease ----

def _read_text(path: str) -> str:
  try:
    with open(path) as f:
      return f.read().strip()
  except OSError:
    return ""


def _identity() -> dict:
  """What names this process: host and pid, and what makes the pid meaningful
  there (a pid is only comparable within one boot and one pid namespace)."""
  pid = os.getpid()
  try:
    namespace = os.readlink("/proc/self/ns/pid")
  except OSError:
    namespace = ""
  return {"host": socket.gethostname(), "pid": pid,
          "boot_id": _read_text("/proc/sys/kernel/random/boot_id"),
          "pid_namespace": namespace, "pid_start": _pid_start(pid)}


def _pid_start(pid: int) -> str:
  """The process's start time in clock ticks since boot ('' if unknown): a
  reused pid has another one."""
  text = _read_text(f"/proc/{pid}/stat")
  return text.rsplit(")", 1)[-1].split()[19] if ")" in text else ""


def _read_lease(path: str):
  """(fields, identity) of the lease file, or None if there is none. A lease
  being written (empty or partial) reads as {} and lives by its mtime."""
  try:
    with open(path, "rb") as f:
      raw = f.read()
      stat = os.fstat(f.fileno())
  except FileNotFoundError:
    return None
  try:
    fields = json.loads(raw)
    fields = fields if isinstance(fields, dict) else {}
  except ValueError:
    fields = {}
  fields.setdefault("heartbeat", stat.st_mtime)
  return fields, (stat.st_ino, stat.st_mtime_ns, raw)


def _stale(fields: dict, timeout_s: float) -> Optional[str]:
  """Why a lease is left by a dead holder, or None if its holder may live."""
  me = _identity()
  same_host = all(fields.get(k) == me[k] and me[k]
                  for k in ("host", "boot_id", "pid_namespace"))
  if same_host and isinstance(fields.get("pid"), int):
    pid = fields["pid"]
    try:
      os.kill(pid, 0)
      alive = True
    except ProcessLookupError:
      alive = False
    except PermissionError:  # Another user's live process.
      alive = True
    if not alive:
      return f"its process {pid} on this host is gone"
    if fields.get("pid_start") and _pid_start(pid) not in ("", fields["pid_start"]):
      return f"its process {pid} on this host is gone (the pid was reused)"
  age = time.time() - float(fields["heartbeat"])
  if age > timeout_s:
    return f"its last heartbeat was {age:.0f} s ago (more than {timeout_s:g} s)"
  return None


def _describe(fields: dict) -> str:
  since = fields.get("since")
  when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(since)) if since else "?"
  age = time.time() - float(fields["heartbeat"])
  return (f"pid {fields.get('pid', '?')} on host {fields.get('host', '?')} "
          f"({fields.get('purpose', 'a run')}, since {when}, last heartbeat {age:.0f} s ago)")


class Lease:
  """The workdir's lease while this process holds it; see the module docstring."""

  def __init__(self, directory: str, purpose: str, timeout_s: float,
               heartbeat_s: float, field: str):
    self.directory, self.purpose, self.field = directory, purpose, field
    self.path = os.path.join(directory, LOCK_FILE)
    self.timeout_s, self.heartbeat_s = timeout_s, heartbeat_s
    self.token = uuid.uuid4().hex
    self.since = time.time()
    self.lost: Optional[dict] = None  # The new holder's fields, once lost.
    self.took_over: Optional[str] = None  # Why a stale lease was taken over.
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None
    self.depth = 0

  def _content(self) -> bytes:
    return json.dumps({**_identity(), "purpose": self.purpose, "since": self.since,
                       "heartbeat": time.time(), "token": self.token}).encode()

  # What `acquire`, `beat` and `release` do to the lease file; lbt.remote's
  # RemoteLease does the same to an object.

  def _read(self):
    """(fields, identity) of the lease, or None if there is none."""
    return _read_lease(self.path)

  def _create(self) -> bool:
    """O_EXCL creation with our content; False if a lease exists."""
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "wb") as f:
      f.write(self._content())
      f.flush()
      os.fsync(f.fileno())
    return True

  def _take_over(self, identity) -> bool:
    """Moves a stale lease aside; True if what moved was that lease."""
    grave = f"{self.path}.stale.{self.token}"
    try:
      os.rename(self.path, grave)
    except FileNotFoundError:  # Another taker was first.
      return False
    moved = _read_lease(grave)
    if moved is not None and moved[1] == identity:
      os.remove(grave)
      return True
    # A fresh lease arrived between our read and our rename: give it back.
    with contextlib.suppress(FileExistsError):
      os.link(grave, self.path)
    os.remove(grave)
    return False

  def acquire(self) -> None:
    makedirs(self.directory)
    with writing(self.path, "the workdir's lock"):
      for attempt in range(20):  # Each pass ends in a decision unless another process races us.
        if self._create():
          break
        held = self._read()
        if held is None:
          continue
        fields, identity = held
        why = _stale(fields, self.timeout_s)
        if why is None and "token" not in fields and attempt < 19:
          time.sleep(0.05)  # Created an instant ago and being written: read it whole.
          continue
        if why is None:
          raise busy(self.directory, fields, self.field, self.timeout_s)
        if self._take_over(identity):
          self.took_over = f"{_describe(fields)}: {why}"
          print(f"lbt: took over the lock of {self.directory} from {self.took_over}",
                flush=True)
      else:  # Lost every race: someone else holds it now.
        held = self._read()
        raise busy(self.directory, held[0] if held else {"heartbeat": time.time()},
                   self.field, self.timeout_s)
    self._thread = threading.Thread(target=self._beat_forever, daemon=True,
                                    name=f"lbt-lease-{os.path.basename(self.directory)}")
    self._thread.start()

  def _beat_forever(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        if not self.beat():
          return
      except OSError as e:  # A full disk: others will see the lease expire.
        logging.warning("lbt: heartbeat of %s failed: %s", self.path, reason(e))

  def beat(self) -> bool:
    """Refreshes the heartbeat; False (and `lost` set) if another holds the lease."""
    held = self._read()
    if held is None:  # Moved aside by a taker that gives it back, or deleted.
      return self._create() or self.beat()
    if held[0].get("token") != self.token:
      self.lost = held[0]
      return False
    return self._rewrite(held[1])

  def _rewrite(self, identity) -> bool:
    """Replaces our lease (read as `identity`) with a fresh heartbeat."""
    del identity
    tmp = f"{self.path}.{self.token}.tmp"
    with open(tmp, "wb") as f:
      f.write(self._content())
    os.replace(tmp, self.path)
    return True

  def check(self) -> None:
    """Raises WorkdirBusy if another process took the lease from us (our
    heartbeat stalled for longer than the timeout)."""
    if self.lost is not None:
      raise WorkdirBusy(self.field, self.directory,
                        f"a workdir this run still holds; it lost the lock to "
                        f"{_describe(self.lost)} after its own heartbeat stalled for "
                        f"over {self.timeout_s:g} s; this run stopped writing")

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    held = self._read()
    if held is not None and held[0].get("token") == self.token:
      self._remove(held[1])

  def _remove(self, identity) -> None:
    del identity
    with contextlib.suppress(FileNotFoundError):
      os.remove(self.path)


def busy(directory: str, fields: dict, field: str, timeout_s: float) -> WorkdirBusy:
  error = WorkdirBusy(
      field, directory,
      f"a workdir no other process holds, but {_describe(fields)} holds it; wait for "
      f"that run to end, stop it, or use another workdir (a holder that was killed "
      f"leaves a lease that expires {timeout_s:g} s after its last heartbeat)")
  error.holder = fields
  return error


_HELD = {}  # Lock file path -> Lease, of this process.
_HELD_LOCK = threading.Lock()


@contextlib.contextmanager
def lock(path: str, purpose: str = "train", *, timeout_s: float = 60.0,
         heartbeat_s: float = 5.0, field: str = "--workdir") -> Iterator[Lease]:
  """Holds the lease of workdir `path` for the block (re-entrant in one process).

  Args:
    path: the workdir (created if absent).
    purpose: what the holder does, shown to whoever is refused ("train",
      "study point").
    timeout_s: a lease whose heartbeat is older is stale.
    heartbeat_s: how often the holder refreshes it.
    field: the flag the refusal names.

  Raises:
    WorkdirBusy: another live process holds it.
    WriteError: the workdir or its lease cannot be written.
  """
  if is_remote(path):
    from lbt import remote  # pylint: disable=import-outside-toplevel
    directory, kind = path.rstrip("/"), remote.RemoteLease
    key = f"{directory}/{LOCK_FILE}"
  else:
    directory, kind = os.path.abspath(path), Lease
    key = os.path.realpath(os.path.join(directory, LOCK_FILE))
  with _HELD_LOCK:
    lease = _HELD.get(key)
    if lease is None:
      lease = kind(directory, purpose, timeout_s, heartbeat_s, field)
      lease.acquire()
      _HELD[key] = lease
    lease.depth += 1
  try:
    yield lease
  finally:
    with _HELD_LOCK:
      lease.depth -= 1
      if lease.depth == 0:
        del _HELD[key]
        lease.release()


# ---- the log file ----

class _LogFile(logging.FileHandler):
  """A log that never complains on the console: when its own disk is full the
  record is dropped (the run's one-line error already names the cause)."""

  def handleError(self, record):
    del record


def _is_console(handler: logging.Handler) -> bool:
  stream = getattr(handler, "stream", None)
  return stream in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__) or (
      type(handler).__name__ == "ABSLHandler")


@contextlib.contextmanager
def capture_logs(workdir: str, level: int = logging.INFO,
                 name: str = LOG_FILE) -> Iterator[str]:
  """Sends Python logging (orbax's and absl's tracebacks among it) to
  WORKDIR/lbt.log instead of the console for the block; yields the log's path.

  Exceptions that would print themselves from other threads or from native
  callbacks (tensorstore's "Event loop is closed" after a failed save) go to
  the log too. lbt's own console lines are prints and stay on the console.
  Processes other than 0 of a multi-process run pass their own `name`
  (e.g. "lbt.process_3.log"). In a remote workdir (no append) the log is
  written to a local file and copied into the workdir now and then and at
  the end (`lbt.remote.CopiedLog`).
  """
  if is_remote(workdir):
    from lbt import remote  # pylint: disable=import-outside-toplevel
    path = f"{workdir.rstrip('/')}/{name}"
    with writing(path, "the log file"):
      handler = remote.CopiedLog(path)
  else:
    path = os.path.join(os.path.abspath(workdir), name)
    makedirs(os.path.dirname(path))
    with writing(path, "the log file"):
      handler = _LogFile(path)
  handler.setFormatter(logging.Formatter(
      "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"))
  handler.setLevel(level)
  root = logging.getLogger()
  muted = [(h, h.level) for h in root.handlers if _is_console(h)]
  for h, _ in muted:
    h.setLevel(logging.CRITICAL + 1)
  root.addHandler(handler)
  log = logging.getLogger("lbt.uncaught")
  hooks = sys.excepthook, threading.excepthook, sys.unraisablehook
  sys.excepthook = lambda kind, value, tb: log.error(
      "Uncaught exception", exc_info=(kind, value, tb))
  threading.excepthook = lambda args: log.error(
      "Uncaught exception in thread %s", getattr(args.thread, "name", "?"),
      exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
  sys.unraisablehook = lambda args: log.error(
      "Exception ignored in %r", args.object,
      exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
  try:
    yield path
  finally:
    sys.excepthook, threading.excepthook, sys.unraisablehook = hooks
    root.removeHandler(handler)
    handler.close()
    for h, previous in muted:
      h.setLevel(previous)
