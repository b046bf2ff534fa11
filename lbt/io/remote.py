"""What a remote workdir (gs://BUCKET/DIR) needs that a local one does not.

Imports nothing of lbt: lbt.io.files, lbt.io.lease and lbt.io.logs build on it. An
object store lacks three things a local workdir builds on: appending to a file, an atomic rename, and O_EXCL creation. In their place
it has whole-object writes (an object is replaced whole or not at all) and, on
GCS, preconditions on an object's generation, a true compare-and-swap.
Everything else of a workdir (config.json, study.json, report/) goes through
`etils.epath` unchanged; orbax takes gs:// checkpoint directories itself.

- `ObjectStore`s: read an object with its generation; create it only if
  absent; replace or delete it only at a given generation. `GcsStore` maps
  these onto google-cloud-storage's `if_generation_match` (0 = only if
  absent). `EpathStore`, for a remote path without such a client (a scheme
  other than gs://, used through this module directly), has no
  preconditions: its generation is a digest of the content, and each write is
  read back to detect a writer that came between. That is best effort: two
  writers that both read before either writes can both succeed.
- `lbt.io.lease.RemoteLease` puts the lease (same fields, heartbeat, timeout and
  messages) over a store: acquire = create; heartbeat = replace at the
  generation it read (a mismatch: the lease was lost); take over a stale lease
  = replace at the stale generation, in one step (no rename). With
  `EpathStore` two holders can coexist until the loser's next heartbeat reads
  the winner's token and stops it.
- `WholeObject`: a file that grows (metrics.jsonl, TensorBoard events) kept
  whole in memory and rewritten at most every `interval` seconds and on
  flush (`lbt.io.logs.CopiedLog` copies the log up the same way).
- `update_object`: an optimistic read-modify-write of a whole object (the
  study's results.sqlite, which SQLite cannot open on GCS).
"""

import abc
import contextlib
import functools
import hashlib
import os
import random
import tempfile
import time
from typing import Callable, Iterator, NamedTuple, Optional

from etils import epath



class Object(NamedTuple):
  data: bytes
  generation: object  # Compared for equality only.
  updated: float  # Seconds since the epoch.


class ObjectStore(abc.ABC):
  """Whole objects with conditional writes (see the module docstring)."""

  @abc.abstractmethod
  def read(self, path: str) -> Optional[Object]:
    """The object, or None if absent."""

  @abc.abstractmethod
  def create(self, path: str, data: bytes) -> Optional[object]:
    """Writes `data` if `path` is absent; its generation, or None if it exists."""

  @abc.abstractmethod
  def replace(self, path: str, data: bytes, generation) -> Optional[object]:
    """Writes `data` if the object is at `generation`; the new one, or None."""

  @abc.abstractmethod
  def delete(self, path: str, generation) -> bool:
    """Deletes the object if it is at `generation`."""


def _split(path: str):
  """gs://BUCKET/NAME -> (BUCKET, NAME)."""
  bucket, _, name = path.split("://", 1)[1].partition("/")
  return bucket, name


def _code(error: BaseException) -> Optional[int]:
  """The HTTP status of a google-cloud error (google.api_core's `code`)."""
  code = getattr(error, "code", None)
  return code if isinstance(code, int) else None


def _os_error(error: BaseException, path: str) -> OSError:
  """A client error as the OSError lbt.io.files.writing turns into one line."""
  text = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
  if _code(error) in (401, 403):
    return PermissionError(13, text, path)
  return OSError(text)


class GcsStore(ObjectStore):
  """gs:// objects through a `google.cloud.storage.Client`.

  A request retried by the client after it succeeded fails its precondition
  (412); callers that write their own token (the lease) read it back.
  """

  _LOST = (404, 412)  # Absent, or not at the generation given.

  def __init__(self, client):
    self.client = client

  def _blob(self, path: str):
    bucket, name = _split(path)
    return self.client.bucket(bucket).blob(name)

  def read(self, path: str) -> Optional[Object]:
    bucket, name = _split(path)
    for _ in range(10):
      try:
        blob = self.client.bucket(bucket).get_blob(name)
        if blob is None:
          return None
        data = blob.download_as_bytes(if_generation_match=blob.generation)
      except Exception as e:  # pylint: disable=broad-except
        if _code(e) in self._LOST:
          continue  # Replaced or deleted between the two requests.
        raise _os_error(e, path) from e
      updated = blob.updated.timestamp() if blob.updated else time.time()
      return Object(data, blob.generation, updated)
    raise OSError(f"{path} changed under every read")

  def _upload(self, path: str, data: bytes, generation) -> Optional[object]:
    blob = self._blob(path)
    try:
      blob.upload_from_string(data, if_generation_match=generation)
    except Exception as e:  # pylint: disable=broad-except
      if _code(e) in self._LOST:
        return None
      raise _os_error(e, path) from e
    return blob.generation

  def create(self, path: str, data: bytes) -> Optional[object]:
    return self._upload(path, data, 0)

  def replace(self, path: str, data: bytes, generation) -> Optional[object]:
    return self._upload(path, data, generation)

  def delete(self, path: str, generation) -> bool:
    try:
      self._blob(path).delete(if_generation_match=generation)
    except Exception as e:  # pylint: disable=broad-except
      if _code(e) in self._LOST:
        return False
      raise _os_error(e, path) from e
    return True


class EpathStore(ObjectStore):
  """Any path epath opens, without preconditions: best effort (module docstring)."""

  def read(self, path: str) -> Optional[Object]:
    try:
      data = epath.Path(path).read_bytes()
      updated = epath.Path(path).stat().mtime
    except FileNotFoundError:
      return None
    return Object(data, hashlib.sha256(data).hexdigest(), float(updated or 0))

  def _write(self, path: str, data: bytes) -> Optional[object]:
    epath.Path(path).write_bytes(data)
    back = self.read(path)
    return back.generation if back is not None and back.data == data else None

  def create(self, path: str, data: bytes) -> Optional[object]:
    return None if epath.Path(path).exists() else self._write(path, data)

  def replace(self, path: str, data: bytes, generation) -> Optional[object]:
    current = self.read(path)
    if current is None or current.generation != generation:
      return None
    return self._write(path, data)

  def delete(self, path: str, generation) -> bool:
    current = self.read(path)
    if current is None or current.generation != generation:
      return False
    epath.Path(path).unlink(missing_ok=True)
    return True


@functools.lru_cache(maxsize=1)
def _client(storage_module):
  return storage_module.Client()


def store_for(path: str) -> ObjectStore:
  """GcsStore for gs:// where google-cloud-storage is installed, else EpathStore."""
  if path.startswith("gs://"):
    try:
      from google.cloud import storage  # pylint: disable=import-outside-toplevel
    except ImportError:
      storage = None
    if storage is not None:
      try:
        return GcsStore(_client(storage))
      except Exception as e:  # pylint: disable=broad-except
        raise _os_error(e, path) from e  # No credentials: one line (WriteError).
  return EpathStore()


# ---- files that grow ----

class WholeObject:
  """A remote file written like an appended one: GCS has no append, so the
  content is kept in memory and the object rewritten whole by `flush`, and by
  `write` at most every `interval` seconds (or 10x the last upload's time, if
  longer, so that uploads take at most a tenth of the run)."""

  def __init__(self, path: str, interval: float = 10.0):
    self.path, self.interval = path, interval
    self.content, self._dirty = bytearray(), False
    self._uploaded, self._cost = time.time(), 0.0

  @property
  def size(self) -> int:
    return len(self.content)

  def write(self, data) -> None:
    self.content += data.encode() if isinstance(data, str) else data
    self._dirty = True
    if time.time() - self._uploaded >= max(self.interval, 10 * self._cost):
      self.flush()

  def flush(self) -> None:
    if not self._dirty:
      return
    start = time.time()
    epath.Path(self.path).write_bytes(bytes(self.content))
    self._uploaded = time.time()
    self._cost, self._dirty = self._uploaded - start, False

  def close(self) -> None:
    self.flush()


# ---- whole-object transactions ----

@contextlib.contextmanager
def local_copy(data: Optional[bytes], name: str = "copy") -> Iterator[str]:
  """A local file holding `data` (none if None), removed after the block."""
  with tempfile.TemporaryDirectory(prefix="lbt-") as directory:
    local = os.path.join(directory, name)
    if data is not None:
      with open(local, "wb") as f:
        f.write(data)
    yield local


def update_object(path: str, edit: Callable[[str], None], attempts: int = 20) -> None:
  """Edits remote file `path` as a local file and writes it back, unless another
  writer replaced it in between, in which case it starts again from theirs.

  `edit(local_path)` changes the local copy (absent when the object is). A
  compare-and-swap with GcsStore; best effort with EpathStore.
  """
  store = store_for(path)
  for _ in range(attempts):
    current = store.read(path)
    with local_copy(current.data if current else None, os.path.basename(path)) as local:
      edit(local)
      with open(local, "rb") as f:
        data = f.read()
    if current is None:
      written = store.create(path, data)
    else:
      written = store.replace(path, data, current.generation)
    if written is not None:
      return
    time.sleep(random.uniform(0.05, 0.5))  # Another shard's row: retry on theirs.
  raise OSError(f"{path} was replaced by other writers {attempts} times in a row")
