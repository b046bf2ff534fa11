"""Files of a run or a study, local or gs://: paths, whole-file writes, one-line errors.

Every file lbt writes is written whole or not at all: locally a temporary file
in the same directory, fsynced, then renamed over the target
(`write_text_atomic`, `write_bytes_atomic`); on an object store (`gs://BUCKET/DIR`,
`is_remote`, through `etils.epath`) one object write, which replaces the object
whole or not at all.

**Every write failure is one line.** Read-only directories, full disks and
missing permissions raise `WriteError(path, reason)` (lbt.errors), whose
reason keeps the operating system's text whole ("No space left on device
(ENOSPC)"); the command line maps it to exit 4.
"""

import contextlib
import errno
import os
import re
import sqlite3
from typing import Optional

from etils import epath

from lbt.errors import ConfigError, WriteError
from lbt.io import faults

# Operating-system texts a library may bury in its own message (tensorstore does).
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                 errno.ENOTDIR, errno.EISDIR, errno.EIO, errno.EFBIG, errno.ENAMETOOLONG)


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
  """`write_bytes_atomic` of `text` in UTF-8."""
  write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: str, data: bytes, what: Optional[str] = None) -> None:
  """Writes `data` to `path` whole or not at all: a temporary file in the same
  directory, fsynced, then renamed over `path`. A failure (disk full, read-only)
  leaves the previous file untouched and raises WriteError. On a remote path,
  one object write (an object is replaced whole or not at all)."""
  if is_remote(path):
    with writing(path, what):
      epath.Path(path).write_bytes(data)
    return
  tmp = f"{path}.{os.getpid()}.tmp"
  try:
    with writing(path, what):
      with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
      faults.moment("write")
      os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
