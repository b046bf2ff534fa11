"""A fake Google Cloud Storage for tests: gs://BUCKET/NAME is ROOT/BUCKET/NAME.

lbt and the libraries it uses reach GCS three ways; the fake serves all three
from one local directory:
- etils.epath's gs:// backend: lbt's files, orbax's and grain's small files.
  Objects are written whole at close; append mode is refused, as on GCS.
- `google.cloud.storage` (a stand-in module): lbt's lease and study database,
  orbax's deletion of old checkpoints. Every object has a generation number,
  bumped by any write through either view, and `if_generation_match`
  preconditions fail with 412 as on GCS.
- tensorstore's gcs driver (orbax's arrays): orbax's kvstore spec for a gs://
  path is redirected to tensorstore's file driver on the same directory (the
  one part of the way to GCS that is replaced rather than faked).

And a guard: local-only calls (`open`, `os.stat` and so `os.path.exists`,
`os.makedirs`, `os.rename`, `os.replace`, `os.remove`, `os.listdir`,
`os.path.abspath`, `sqlite3.connect`, ...) from lbt's code on a path containing
"gs:" raise `LocalCall` and are recorded in `violations`, which the test
fixture checks is empty at the end, so a test proves that nothing in lbt treats
a gs:// path as a local one, even where the error is caught. A library or C
code that creates local files itself (tensorstore, SQLite) would leave a "gs:"
entry in the working directory, which the fixture also checks.
"""

import builtins
import datetime
import io
import os
import posixpath
import shutil
import sqlite3
import sys
import sysconfig
import threading
import types

from etils.epath import backend as backend_lib
from etils.epath import gpath

PREFIX = "gs://"


class LocalCall(AssertionError):
  """A local-only call on a gs:// path."""


class PreconditionFailed(Exception):
  code = 412  # As google.api_core.exceptions.PreconditionFailed.


class NotFound(Exception):
  code = 404  # As google.api_core.exceptions.NotFound.


class FakeGcs:
  """The bucket tree under `root`, with generations; see the module docstring."""

  def __init__(self, root: str):
    self.root = root
    self.lock = threading.RLock()
    self.generations = {}
    self._next = 1
    self.violations = []  # Local-only calls on gs:// paths from lbt (or a test).
    self.library_calls = []  # The same from a library (allowed; see _guarded).
    self.writes = []  # gs:// paths written through epath, in order.

  def local(self, path) -> str:
    path = os.fspath(path)
    if not path.startswith(PREFIX):
      raise ValueError(f"not a gs:// path: {path}")
    return os.path.join(self.root, path[len(PREFIX):])

  def remote(self, local: str) -> str:
    return PREFIX + os.path.relpath(local, self.root)

  def generation(self, local: str) -> int:
    """The object's generation (0 if absent)."""
    with self.lock:
      if not os.path.isfile(local):
        self.generations.pop(local, None)
        return 0
      if local not in self.generations:
        self.bump(local)
      return self.generations[local]

  def bump(self, local: str) -> int:
    with self.lock:
      self.generations[local] = self._next
      self._next += 1
      return self.generations[local]

  def put(self, local: str, data: bytes) -> int:
    """Writes an object whole (a temporary file renamed over it)."""
    with self.lock:
      os.makedirs(os.path.dirname(local), exist_ok=True)
      tmp = f"{local}.fake-upload-{threading.get_ident()}"
      with _real_open(tmp, "wb") as f:
        f.write(data)
      os.replace(tmp, local)
      return self.bump(local)


_real_open = builtins.open


class _Upload:
  """A gs:// object being written: uploaded whole at close."""

  def __init__(self, fake: FakeGcs, path: str, binary: bool):
    self.fake, self.path = fake, path
    self._buffer = io.BytesIO() if binary else io.StringIO()
    self.closed = False

  def write(self, data):
    return self._buffer.write(data)

  def writelines(self, lines):
    for line in lines:
      self.write(line)

  def flush(self):
    pass  # GCS uploads at close.

  def close(self):
    if self.closed:
      return
    self.closed = True
    data = self._buffer.getvalue()
    self.fake.put(self.fake.local(self.path), data if isinstance(data, bytes) else data.encode())
    self.fake.writes.append(self.path)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class _Backend(backend_lib.Backend):
  """epath's view of the fake (what gcsfs is to real gs:// paths)."""

  def __init__(self, fake: FakeGcs):
    self.fake = fake

  def _local(self, path) -> str:
    return self.fake.local(path)

  def open(self, path, mode):
    if "a" in mode or "+" in mode:
      raise OSError(f"GCS objects cannot be appended to or updated: open({path!r}, {mode!r})")
    if "w" in mode:
      return _Upload(self.fake, os.fspath(path), "b" in mode)
    local = self._local(path)
    if os.path.isdir(local):
      raise IsADirectoryError(path)
    return _real_open(local, mode, encoding=None if "b" in mode else "utf-8")

  def exists(self, path):
    return os.path.exists(self._local(path))

  def isdir(self, path):
    return os.path.isdir(self._local(path))

  def listdir(self, path):
    return [n for n in os.listdir(self._local(path)) if ".fake-upload-" not in n]

  def glob(self, path):
    import glob as glob_lib
    return [self.fake.remote(p) for p in glob_lib.glob(self._local(path))]

  def walk(self, top, *, top_down=True, on_error=None):
    for root, dirs, files in os.walk(self._local(top), topdown=top_down, onerror=on_error):
      yield self.fake.remote(root), dirs, files

  def makedirs(self, path, *, exist_ok=False, mode=None):
    os.makedirs(self._local(path), exist_ok=exist_ok)

  def mkdir(self, path, *, exist_ok=False, mode=None):
    try:
      os.mkdir(self._local(path))
    except FileExistsError:
      if not exist_ok:
        raise

  def rmtree(self, path):
    local = self._local(path)
    if not os.path.exists(local):
      raise FileNotFoundError(path)
    with self.fake.lock:
      shutil.rmtree(local) if os.path.isdir(local) else os.remove(local)

  def remove(self, path):
    local = self._local(path)
    with self.fake.lock:
      if os.path.isdir(local):
        os.rmdir(local)
      else:
        os.remove(local)
      self.fake.generations.pop(local, None)

  def rename(self, path, dst):  # GCS: a copy, then a delete (not atomic).
    if self.exists(dst):
      raise FileExistsError(dst)
    os.rename(self._local(path), self._local(dst))

  def replace(self, path, dst):
    os.replace(self._local(path), self._local(dst))

  def copy(self, path, dst, overwrite):
    if not overwrite and self.exists(dst):
      raise FileExistsError(dst)
    with _real_open(self._local(path), "rb") as f:
      self.fake.put(self._local(dst), f.read())

  def stat(self, path):
    return backend_lib.os_backend.stat(self._local(path))


# ---- google.cloud.storage ----

class _Blob:
  def __init__(self, fake: FakeGcs, bucket: str, name: str):
    self.fake, self.name = fake, name
    self._local = fake.local(f"{PREFIX}{bucket}/{name}")
    self.generation = self.updated = None

  def _load(self) -> bool:
    generation = self.fake.generation(self._local)
    if not generation:
      return False
    self.generation = generation
    self.updated = datetime.datetime.fromtimestamp(os.stat(self._local).st_mtime,
                                                   datetime.timezone.utc)
    return True

  def _check(self, if_generation_match):
    current = self.fake.generation(self._local)
    if if_generation_match is not None and if_generation_match != current:
      raise (NotFound if not current and if_generation_match else PreconditionFailed)(
          f"{self.name}: generation {current}, not {if_generation_match}")

  def upload_from_string(self, data, content_type=None, if_generation_match=None):
    del content_type
    with self.fake.lock:
      self._check(if_generation_match)
      self.fake.put(self._local, data.encode() if isinstance(data, str) else data)
      self._load()

  def download_as_bytes(self, if_generation_match=None):
    with self.fake.lock:
      if not self.fake.generation(self._local):
        raise NotFound(self.name)
      self._check(if_generation_match)
      with _real_open(self._local, "rb") as f:
        return f.read()

  def delete(self, if_generation_match=None):
    with self.fake.lock:
      if not self.fake.generation(self._local):
        raise NotFound(self.name)
      self._check(if_generation_match)
      os.remove(self._local)
      self.fake.generations.pop(self._local, None)

  def exists(self):
    return bool(self.fake.generation(self._local))


class _Bucket:
  hierarchical_namespace_enabled = False

  def __init__(self, fake: FakeGcs, name: str):
    self.fake, self.name = fake, name

  def blob(self, name: str) -> _Blob:
    return _Blob(self.fake, self.name, name)

  def get_blob(self, name: str):
    blob = self.blob(name)
    return blob if blob._load() else None  # pylint: disable=protected-access


def storage_module(fake: FakeGcs) -> types.ModuleType:
  """A stand-in for `google.cloud.storage` on the fake."""
  module = types.ModuleType("google.cloud.storage")

  class Client:
    def __init__(self, *args, **kwargs):
      del args, kwargs

    def bucket(self, name):
      return _Bucket(fake, name)

    get_bucket = bucket

  module.Client = Client
  return module


# ---- the guard ----

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_STDLIB = (sysconfig.get_paths()["stdlib"], "<frozen")


def _caller() -> str:
  """The file of the first caller outside the standard library and this file
  (os.path.exists is the caller of os.stat, its caller is the one to judge)."""
  frame = sys._getframe(2)  # pylint: disable=protected-access
  while frame is not None and (frame.f_code.co_filename.startswith(_STDLIB)
                               or frame.f_code.co_filename == __file__):
    frame = frame.f_back
  return frame.f_code.co_filename if frame is not None else ""


def _guarded(fake: FakeGcs, name: str, function):
  """`function`, refusing a gs:// path from this repository's code (lbt, the
  tests). Libraries may probe one harmlessly (orbax calls os.path.islink on
  its gs:// checkpoint directories): that is recorded in `library_calls`."""
  def call(*args, **kwargs):
    for arg in args[:2]:
      if isinstance(arg, (str, bytes, os.PathLike)):
        text = os.fsdecode(os.fspath(arg))
        if "gs:" in text:
          caller = _caller()
          message = f"local-only call {name}({text!r}) on a gs:// path from {caller}"
          if not caller.startswith(REPO + os.sep) or ".venv" in caller:
            fake.library_calls.append(message)
            break
          fake.violations.append(message)
          raise LocalCall(message)
    return function(*args, **kwargs)
  return call


GUARDED = {
    builtins: ("open",), io: ("open",), sqlite3: ("connect",),
    os: ("open", "stat", "lstat", "mkdir", "makedirs", "listdir", "scandir", "remove",
         "unlink", "rmdir", "rename", "replace", "link", "chdir"),
    posixpath: ("abspath", "realpath"),
}


def install(fake: FakeGcs, monkeypatch) -> None:
  """Serves gs:// from the fake and guards local-only calls (undone by monkeypatch)."""
  backends = gpath._PREFIX_TO_BACKEND  # pylint: disable=protected-access
  monkeypatch.setitem(backends, "gs", _Backend(fake))
  module = storage_module(fake)
  try:
    import google.cloud as cloud  # pylint: disable=import-outside-toplevel
  except ImportError:
    cloud = types.ModuleType("google.cloud")
    cloud.__path__ = []
    monkeypatch.setitem(sys.modules, "google.cloud", cloud)
    import google  # pylint: disable=import-outside-toplevel
    monkeypatch.setattr(google, "cloud", cloud, raising=False)
  monkeypatch.setattr(cloud, "storage", module, raising=False)
  monkeypatch.setitem(sys.modules, "google.cloud.storage", module)

  from orbax.checkpoint._src.path import gcs_utils  # pylint: disable=import-outside-toplevel

  def file_kvstore(path):
    return {"driver": "file", "path": fake.local(str(path))}
  monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs", file_kvstore)

  for module_, names in GUARDED.items():
    for name in names:
      monkeypatch.setattr(module_, name, _guarded(fake, f"{module_.__name__}.{name}",
                                                  getattr(module_, name)))
