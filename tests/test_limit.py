"""lbt.limit end to end on a tiny MLP: the protocol's waves, its files, and a
kill -9 in the middle of the search that the rerun turns into the same answer."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lbt.io import layout
from lbt import limit
from lbt.studies import search_rules

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = """
import ml_collections
from configs import fashion_mnist
TARGET_ACCURACY = 0.7
BUDGET_EPOCHS, BUDGET_UPDATES = 4.0, 40
def get_config(optimizer="momentum"):
  config = fashion_mnist.get_config(optimizer + ",batch=8192,model=mlp")
  config.model.hidden_sizes = (16,)
  config.dataset.data_dir = {data_dir!r}
  config.dataset.validation_examples = 5000
  config.eval_batch_size = 5000
  config.checkpoint_every_steps = 5
  config.schedule = ml_collections.ConfigDict({{"name": "constant", "warmup_epochs": 0.0}})
  return config
"""


@pytest.fixture(scope="module")
def tiny(data_dir, tmp_path_factory):
  path = tmp_path_factory.mktemp("limit_config") / "tiny_limit.py"
  path.write_text(TINY.format(data_dir=data_dir))
  return str(path)


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("limit") / "reference")
  assert limit.main(["lbt.limit", f"--config={tiny}", f"--workdir={workdir}"]) == 0
  with open(os.path.join(workdir, layout.LIMIT)) as f:
    return workdir, json.load(f)


def test_each_batch_is_searched_to_a_bracket_and_the_batches_double(reference):
  _, summary = reference
  batches = [r["batch"] for r in summary["batches"]]
  assert batches[0] == 8192 and all(b == 2 * a or b == 50000
                                    for a, b in zip(batches, batches[1:]))
  for row in summary["batches"]:
    if not row["reached"]:
      continue
    tried = sorted(float(lr) for lr in row["learning_rates"])
    assert all(float(np.log2(lr / tried[0])).is_integer() for lr in tried)
    assert tried[0] < row["best_learning_rate"] < tried[-1] or row["trials"] >= 10
  best = {r["batch"]: r["updates_to_target"] for r in summary["batches"]}
  stop = search_rules.next_batch(best, start=8192, max_batch=50000)
  assert stop is None  # The protocol ran until the batch range said it was done.


def test_limit_json_has_the_documented_fields(reference):
  workdir, summary = reference
  for key in ("b_crit", "b_crit_low", "b_crit_high", "s_min", "e_min", "target", "batches"):
    assert key in summary
  for row in summary["batches"]:
    assert {"batch", "best_learning_rate", "updates_to_target", "examples_to_target",
            "reached"} <= set(row)
    if row["reached"]:
      assert row["examples_to_target"] == row["updates_to_target"] * row["batch"]
  assert os.path.exists(os.path.join(workdir, "report", "limit.md"))


def test_kill_9_mid_search_then_rerun_gives_the_same_limit_json(tiny, reference,
                                                                 tmp_path):
  _, expected = reference
  workdir = str(tmp_path / "killed")
  command = [sys.executable, "-m", "lbt.limit", f"--config={tiny}", f"--workdir={workdir}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  started = 0
  for line in process.stdout:  # Killed while the third trial trains.
    started += line.startswith("lbt.limit: ") and "(batch" in line
    if started == 3:
      time.sleep(1.5)
      process.send_signal(signal.SIGKILL)
      break
  process.wait()
  assert process.returncode == -signal.SIGKILL
  rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
  assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
  with open(os.path.join(workdir, layout.LIMIT)) as f:
    assert json.load(f) == expected
