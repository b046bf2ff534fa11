"""One trainer per workdir: the lease, on a local or shared disk and on gs://.

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
- Stale: a heartbeat older than `timeout_s`, or a holder dead on this very
  host (same boot and pid namespace; pid gone, reused, or a zombie: killed
  with a parent that does not reap it). A stopped holder (SIGSTOP) lives, by
  its heartbeat, until the timeout. A taker moves it
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

**Remote workdirs** (`gs://BUCKET/DIR`) have no O_EXCL and no atomic rename;
`RemoteLease` maps the lease onto an object store's preconditions
(`lbt.remote`), a true compare-and-swap: acquire = create only if absent;
heartbeat and take-over = replace at the generation read; release = delete
at ours.
"""

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Iterator, Optional

from lbt.io import layout
from lbt.io import files, remote
from lbt.errors import WorkdirBusy


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


def _stat(path: str) -> list:
  """The fields of a /proc stat file after the command name, state first ([]
  if unreadable); the name may hold spaces and parentheses."""
  text = _read_text(path)
  return text.rsplit(")", 1)[-1].split() if ")" in text else []


def _pid_start(pid: int) -> str:
  """The process's start time in clock ticks since boot ('' if unknown): a
  reused pid has another one."""
  fields = _stat(f"/proc/{pid}/stat")
  return fields[19] if len(fields) > 19 else ""


_PF_EXITING = 0x4  # Linux's flag of a thread inside exit (include/linux/sched.h).


def _exited(pid: int) -> Optional[str]:
  """How the process has exited though its pid remains, or None if it runs.

  A killed trainer is a zombie while its parent lives without waiting for it,
  or, when the parent died too, in a container whose first process reaps no
  orphans. Every thread counts: a main thread that exits alone shows as a
  zombie while the others run; after a kill, the last threads may still be
  tearing the process down, inside exit, where they write nothing more (one
  not yet inside, that may finish a rename, keeps the process alive).
  """
  try:
    tasks = os.listdir(f"/proc/{pid}/task")
  except OSError:
    return None
  for tid in tasks:
    fields = _stat(f"/proc/{pid}/task/{tid}/stat")
    if fields and fields[0] not in "ZX" and not int(fields[6]) & _PF_EXITING:
      return None
  leader = _stat(f"/proc/{pid}/stat")
  if not tasks or not leader:
    return None
  return "a zombie, not yet reaped" if leader[0] == "Z" else "exiting"


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
    exited = _exited(pid)
    if exited:
      return f"its process {pid} on this host is gone ({exited})"
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
    self.path = os.path.join(directory, layout.LOCK)
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

  # What `acquire`, `beat` and `release` do to the lease file; lbt.io.remote's
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
    files.makedirs(self.directory)
    with files.writing(self.path, "the workdir's lock"):
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
        logging.warning("lbt: heartbeat of %s failed: %s", self.path, files.reason(e))

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


class RemoteLease(Lease):
  """Lease on an object: the identity of a read is its generation."""

  def __init__(self, directory: str, purpose: str, timeout_s: float,
               heartbeat_s: float, field: str, store: Optional[remote.ObjectStore] = None):
    super().__init__(directory, purpose, timeout_s, heartbeat_s, field)
    self._store = store

  @property
  def store(self) -> remote.ObjectStore:
    if self._store is None:  # First used inside acquire's `writing`.
      self._store = remote.store_for(self.path)
    return self._store

  def _read(self):
    found = self.store.read(self.path)
    if found is None:
      return None
    try:
      fields = json.loads(found.data)
      fields = fields if isinstance(fields, dict) else {}
    except ValueError:
      fields = {}
    fields.setdefault("heartbeat", found.updated)
    return fields, found.generation

  def _ours(self) -> bool:
    """Whether the lease holds our token (a write that reported failure may
    still have landed: a client's retry of a request that succeeded)."""
    held = self._read()
    return held is not None and held[0].get("token") == self.token

  def _create(self) -> bool:
    return self.store.create(self.path, self._content()) is not None or self._ours()

  def _swap(self, generation) -> bool:
    """Writes our lease over the one at `generation`, in one step."""
    return (self.store.replace(self.path, self._content(), generation) is not None
            or self._ours())

  def _take_over(self, identity) -> bool:
    return self._swap(identity)  # acquire's next _create then finds it ours.

  def _rewrite(self, identity) -> bool:
    # Else replaced or deleted since we read it: decide again.
    return self._swap(identity) or self.beat()

  def _remove(self, identity) -> None:
    self.store.delete(self.path, identity)


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
  if files.is_remote(path):
    directory, kind = path.rstrip("/"), RemoteLease
    key = f"{directory}/{layout.LOCK}"
  else:
    directory, kind = os.path.abspath(path), Lease
    key = os.path.realpath(os.path.join(directory, layout.LOCK))
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


