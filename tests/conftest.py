"""Test set-up: 8 CPU devices, tests/support importable, and one prepared
Fashion-MNIST for the session."""

import os
import sys

# Must happen before jax is imported anywhere: sharding tests need 8 devices.
_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tests mirror lbt's packages (tests/engine/, tests/studies/, ...); what
# several of them share lies in tests/support/ (the tiny study, the kill
# sweep, the fake GCS, hand-written study directories).
for path in (REPO, os.path.join(REPO, "tests", "support")):
  if path not in sys.path:
    sys.path.insert(0, path)


@pytest.fixture(scope="session")
def data_dir():
  """The TFDS data dir holding Fashion-MNIST, built once from Debian's files."""
  from lbt.data import catalog, fashion_mnist
  path = catalog.default_data_dir()
  fashion_mnist.prepare(path)
  return path


@pytest.fixture
def make_config(data_dir):
  """configs/fashion_mnist.py:<arg> with overrides given as a__b=value."""
  def make(arg: str = "", **overrides):
    from configs import fashion_mnist
    config = fashion_mnist.get_config(arg or None)
    config.dataset.data_dir = data_dir
    for dotted, value in overrides.items():
      node = config
      *parents, leaf = dotted.split("__")
      for p in parents:
        node = node[p]
      node[leaf] = value
    return config
  return make


@pytest.fixture(scope="module")
def study_file(data_dir, tmp_path_factory):
  """tests/support/tiny_study.py's study file, written for this session's data dir."""
  from tiny_study import STUDY_FILE
  path = tmp_path_factory.mktemp("study") / "tiny_study.py"
  path.write_text(STUDY_FILE.format(data_dir=data_dir))
  return str(path)


@pytest.fixture(scope="module")
def uninterrupted(study_file, tmp_path_factory):
  """The tiny study run once in-process, start to end: (workdir, statuses)."""
  from tiny_study import load, run_study
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  return workdir, run_study(load(study_file), workdir)
