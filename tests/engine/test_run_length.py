"""How long a run lasts: num_epochs or num_train_steps (said in one line), a
target on held-out data, a caller's cap; and a section's defaults applied
before the step reads it."""

import json
import os
import signal
import subprocess
import sys

import ml_collections
import pytest

from lbt.engine import config as config_lib
from lbt.io import metrics
from lbt.engine import train
from lbt.stats import steps_to_target
from lbt.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny(make_config, **overrides):
  config = make_config("momentum,batch=1000,model=mlp", eval_batch_size=5000,
                       log_every_steps=1, eval_every_steps=0, **overrides)
  config.model.hidden_sizes = (32,)
  return config


def test_adversarial_section_without_epsilon_and_weight_trains(make_config, tmp_path):
  """Its defaults (no projection, weight 0.5) are filled where it is validated,
  and the step reads the filled section (it used to index them and fail)."""
  config = tiny(make_config, num_train_steps=2)
  config.loss.adversarial = ml_collections.ConfigDict(
      {"enabled": True, "step_size": 0.01, "num_steps": 1, "parameters": "fresh"})
  facts = config_lib.validate(config, num_devices=8)
  assert facts.adversarial["epsilon"] is None and facts.adversarial["weight"] == 0.5
  summary = train.train_and_evaluate(config, str(tmp_path / "wd"))
  assert summary["num_train_steps"] == 2 and summary["eval_accuracy"] > 0


def test_num_train_steps_over_num_epochs_is_said_in_one_line(make_config, tmp_path, capsys):
  config = tiny(make_config, num_train_steps=3, num_epochs=5.0)
  facts = config_lib.validate(config, num_devices=8)
  assert (facts.num_train_steps, facts.length_from) == (3, "num_train_steps")
  train.train_and_evaluate(config, str(tmp_path / "wd"))
  lines = [l for l in capsys.readouterr().out.splitlines() if "num_epochs=5" in l]
  assert lines == ["lbt: the run lasts num_train_steps=3 updates (0.05 epochs); "
                   "num_epochs=5 is not used"]
  epochs_only = config_lib.validate(tiny(make_config, num_epochs=0.05), num_devices=8)
  assert (epochs_only.num_train_steps, epochs_only.length_from) == (3, "num_epochs")
  assert epochs_only.length_note() is None


def target_config(make_config, value, **overrides):
  config = tiny(make_config, num_epochs=2.0, dataset__validation_examples=5000,
                **overrides)
  config.stop_at_target = ml_collections.ConfigDict({"value": value, "every": 1})
  return config


def test_a_run_stops_at_the_first_validation_crossing(make_config, tmp_path):
  """The crossing recorded is the first update whose validation accuracy,
  evaluated after every update, reaches the target (checked against the
  validation lines themselves), and the run stops there."""
  workdir = str(tmp_path / "wd")
  summary = train.train_and_evaluate(target_config(make_config, 0.7), workdir)
  records = metrics.read_jsonl(workdir)
  validations = [r for r in records if r["kind"] == "validation"]
  crossing = steps_to_target.first_at_target([r["step"] for r in validations],
                                    [r["accuracy"] for r in validations], 0.7)
  target, = [r for r in records if r["kind"] == "target"]
  assert crossing is not None and target["step"] == crossing
  assert target["examples"] == crossing * 1000 and target["every"] == 1
  assert summary["num_train_steps"] == crossing and summary["stopped_by"] == "target"
  assert max(r["step"] for r in records if r["kind"] == "train") == crossing
  # The test set only reports: one eval line, at the stop.
  assert [r["step"] for r in records if r["kind"] == "eval"] == [crossing]


def test_an_unreached_target_runs_the_budget_and_a_cap_stops_early(make_config, tmp_path):
  workdir = str(tmp_path / "never")
  summary = train.train_and_evaluate(target_config(make_config, 0.999), workdir)
  assert summary["stopped_by"] == "end" and summary["num_train_steps"] == 110
  assert not metrics.read_jsonl(workdir, "target")
  capped = train.train_and_evaluate(target_config(make_config, 0.999),
                                    str(tmp_path / "capped"), max_updates=7)
  assert capped["stopped_by"] == "max_updates" and capped["num_train_steps"] == 7


@pytest.mark.parametrize("section,field", [
    ({"value": 0.8, "metric": "test_accuracy"}, "stop_at_target.metric"),
    ({"value": 1.5}, "stop_at_target.value"),
    ({"value": 0.8, "every": -1}, "stop_at_target.every"),
    ({"value": 0.8, "patience": 3}, "stop_at_target.patience")])
def test_bad_target_sections_name_their_field(make_config, section, field):
  config = tiny(make_config, dataset__validation_examples=5000)
  config.stop_at_target = ml_collections.ConfigDict(section)
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    config_lib.validate(config, num_devices=8)


def test_a_target_needs_a_validation_split(make_config):
  config = tiny(make_config)
  config.stop_at_target = ml_collections.ConfigDict({"value": 0.8})
  with pytest.raises(ConfigError, match="dataset.validation_examples"):
    config_lib.validate(config, num_devices=8)


KILLED_RUN = """
import sys
sys.path.insert(0, {repo!r})
import ml_collections
from configs import fashion_mnist
from lbt.engine import train
config = fashion_mnist.get_config("momentum,batch=1000,model=mlp")
config.dataset.data_dir = {data_dir!r}
config.model.hidden_sizes = (32,)
config.eval_batch_size, config.log_every_steps, config.eval_every_steps = 5000, 1, 0
config.num_epochs, config.checkpoint_every_steps = 2.0, 2
config.dataset.validation_examples = 5000
config.stop_at_target = ml_collections.ConfigDict({{"value": 0.7, "every": 1}})
train.train_and_evaluate(config, {workdir!r}, max_updates={max_updates})
"""


@pytest.mark.parametrize("fault,capped", [("checkpoint:1", False), ("ended:1", False),
                                          ("ended:1", True)])
def test_kill_9_before_or_at_the_stop_then_rerun_stops_at_the_same_update(
    make_config, data_dir, tmp_path, fault, capped):
  """Killed after the checkpoint of update 2, before the crossing; or after
  the checkpoint of the update the run stops at, before its summary: at the
  crossing, or at a cap one update before it (a tuning trial's). The rerun
  stops at the same update for the same reason, each update logged once."""
  reference = str(tmp_path / "reference")
  config = target_config(make_config, 0.7, checkpoint_every_steps=2)
  train.train_and_evaluate(config, reference)
  crossing = metrics.read_jsonl(reference, "target")[0]["step"]
  assert crossing > 2
  max_updates = crossing - 1 if capped else 0
  if capped:
    reference = str(tmp_path / "capped")
    train.train_and_evaluate(config, reference, max_updates=max_updates)
  workdir = str(tmp_path / "killed")
  script = KILLED_RUN.format(repo=REPO, data_dir=data_dir, workdir=workdir,
                             max_updates=max_updates)
  env = dict(os.environ, JAX_PLATFORMS="cpu", LBT_FAULT=fault)
  first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True)
  assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
  del env["LBT_FAULT"]
  rerun = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  stop = lambda w: [(r["num_train_steps"], r["stopped_by"])
                    for r in metrics.read_jsonl(w, "summary")]
  assert stop(workdir) == stop(reference) == [
      (max_updates, "max_updates") if capped else (crossing, "target")]
  same = metrics.read_jsonl(workdir, "target")
  assert [(r["step"], r["value"]) for r in same] == [
      (r["step"], r["value"]) for r in metrics.read_jsonl(reference, "target")]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    steps = [json.loads(l)["step"] for l in f if '"kind": "train"' in l]
  assert steps == list(range(1, stop(reference)[0][0] + 1))  # Each update once.
