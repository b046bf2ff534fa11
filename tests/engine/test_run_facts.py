"""RunFacts as the one source of derived values: written beside config.json,
checked on resume, read by the results; and the one decision per update of
what it computes and writes."""

import json
import os

import pytest

from lbt.engine import config as config_lib
from lbt.engine import train, update_plan
from lbt.engine import workdir as workdir_lib
from lbt.errors import ConfigError
from lbt.io import layout
from lbt.studies import results


def tiny(make_config, **overrides):
  config = make_config("momentum,batch=1000,model=mlp", eval_batch_size=5000,
                       log_every_steps=1, eval_every_steps=0, num_train_steps=2,
                       checkpoint_every_steps=0, **overrides)
  config.model.hidden_sizes = (32,)
  return config


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
  """(config, facts, workdir) of one finished tiny run, a study's point."""
  from configs import fashion_mnist  # pylint: disable=import-outside-toplevel

  def make_config(arg, **overrides):
    config = fashion_mnist.get_config(arg)
    config.dataset.data_dir = data_dir
    config.update_from_flattened_dict({k.replace("__", "."): v for k, v in overrides.items()})
    return config

  config = tiny(make_config, microbatch_size=500, dataset__validation_examples=5000)
  facts = config_lib.validate(config, num_devices=8)
  workdir = str(tmp_path_factory.mktemp("study") / "momentum-b1000")
  train.train_and_evaluate(config, workdir)
  return config, facts, workdir


def read_facts(workdir):
  with open(os.path.join(workdir, layout.FACTS)) as f:
    return json.load(f)


def test_facts_json_is_written_beside_config_json_and_equals_validates(finished):
  config, facts, workdir = finished
  stored = read_facts(workdir)
  assert stored == facts.to_dict()
  assert (stored["microbatch_size"], stored["steps_per_epoch"], stored["train_examples"]
          ) == (500, 55, 55000)
  assert stored["layouts"] == [[1000, 2, 504]]  # 500 padded to a multiple of 8 devices
  assert stored["length_from"] == "num_train_steps" and stored["num_train_steps"] == 2
  workdir_lib.check_facts(facts, workdir)  # the same facts: resumes


def test_a_resume_whose_stored_facts_differ_is_refused_naming_them(finished, tmp_path):
  config, facts, workdir = finished
  stored = read_facts(workdir)
  (tmp_path / layout.FACTS).write_text(json.dumps({**stored, "steps_per_epoch": 54}))
  with pytest.raises(ConfigError) as refused:
    workdir_lib.check_facts(facts, str(tmp_path))
  message = str(refused.value)
  assert "\n" not in message and "steps_per_epoch: 54 then, 55 now" in message
  assert "num_train_steps" not in message and layout.FACTS in message
  # Facts of the device count may differ (a resume on another count), and so
  # may any when the config changed as allowed; a fact lbt added later is no
  # difference.
  (tmp_path / layout.FACTS).write_text(json.dumps(
      {**{k: v for k, v in stored.items() if k != "batch_limits"},
       "num_devices": 4, "layouts": [[1000, 2, 500]]}))
  workdir_lib.check_facts(facts, str(tmp_path))
  (tmp_path / layout.FACTS).write_text(json.dumps({**stored, "num_train_steps": 3}))
  workdir_lib.check_facts(facts, str(tmp_path), ["num_train_steps"])


def test_a_run_refuses_to_resume_on_other_facts_and_writes_them_where_absent(
    make_config, tmp_path):
  config = tiny(make_config)
  workdir = str(tmp_path / "wd")
  train.train_and_evaluate(config, workdir)
  path = os.path.join(workdir, layout.FACTS)
  stored = read_facts(workdir)
  with open(path, "w") as f:
    json.dump({**stored, "peak_learning_rate": 1.0}, f)
  with pytest.raises(ConfigError, match="peak_learning_rate: 1.0 then"):
    train.train_and_evaluate(config, workdir)
  os.remove(path)  # a workdir written before lbt kept its facts
  train.train_and_evaluate(config, workdir)
  assert read_facts(workdir) == stored


def test_results_read_the_facts_not_an_edited_config(finished):
  config, facts, workdir = finished
  study, name = os.path.split(workdir)
  before = results.point_row(results.load_point(study, name), {})
  assert (before["batch_size"], before["microbatch_size"], before["validation_examples"]
          ) == (1000, 500, 5000)
  assert before["epochs"] == pytest.approx(2 / 55)
  assert before["effective_learning_rate"] == facts.peak_learning_rate
  path = os.path.join(workdir, layout.CONFIG)
  with open(path) as f:
    edited = json.load(f)
  edited.update(batch_size=250, microbatch_size=0)
  edited["dataset"]["validation_examples"] = 0
  with open(path, "w") as f:
    json.dump(edited, f)
  try:
    after = results.point_row(results.load_point(study, name), {})
  finally:
    with open(path, "w") as f:
      f.write(config.to_json(indent=2, sort_keys=True))
  for column in ("batch_size", "microbatch_size", "validation_examples", "epochs",
                 "effective_learning_rate"):
    assert after[column] == before[column], column


def test_an_old_workdir_without_facts_json_gets_its_row_from_config_and_run():
  point = results.PointRecords("momentum-b128", {
      "batch_size": 128, "microbatch_size": 0, "dataset": {"name": "fashion_mnist"},
      "optimizer": {"name": "momentum", "learning_rate": 0.1}, "schedule": {"name": "cosine"},
      "bn": {}, "loss": {"label_smoothing": 0.0}}, [
          {"kind": "run", "step": 0, "steps_per_epoch": 468, "num_train_steps": 936,
           "effective_learning_rate": 0.05},
          {"kind": "summary", "step": 936, "num_train_steps": 936, "examples": 936 * 128}],
      {}, {})
  row = results.point_row(point, {})
  assert (row["microbatch_size"], row["epochs"], row["effective_learning_rate"],
          row["validation_examples"]) == (128, 2.0, 0.05, 0)


# ---- one decision per update ----

def actions(cadence, done, last=False):
  a = update_plan.decide(cadence, done, last)
  return {k for k in ("log", "flush", "evaluate", "target_check", "checkpoint", "last",
                      "capped", "full_diagnostics") if getattr(a, k)}


def test_each_update_is_decided_once_from_the_cadence_and_its_place():
  cadence = update_plan.Cadence(log_every=5, eval_every=6, checkpoint_every=4,
                                target_every=3, max_updates=0)
  full = "full_diagnostics"
  assert actions(cadence, 1) == actions(cadence, 2) == set()
  assert actions(cadence, 3) == {"target_check", "flush", full}
  assert actions(cadence, 4) == {"checkpoint", full}  # flushed by the save itself
  assert actions(cadence, 5) == {"log", "flush", full}
  assert actions(cadence, 6) == {"evaluate", "target_check", "flush", full}
  assert actions(cadence, 7, last=True) == {
      "evaluate", "target_check", "checkpoint", "last", "flush", full}
  assert actions(cadence, 12, last=True) == {
      "evaluate", "target_check", "checkpoint", "last", "flush", full}
  no_target = update_plan.Cadence(5, 0, 0, 0, 0)
  assert actions(no_target, 7, last=True) == {"evaluate", "checkpoint", "last", "flush", full}
  assert actions(no_target, 10) == {"log", "flush", full}


def test_a_cap_a_target_and_the_end_each_stop_the_run():
  capped = update_plan.Cadence(log_every=5, eval_every=0, checkpoint_every=0,
                               target_every=2, max_updates=7)
  seven = update_plan.decide(capped, 7, last=False)
  # Evaluated and checkpointed; its train lines are written with the checkpoint.
  assert (seven.capped, seven.evaluate, seven.checkpoint, seven.flush) == (
      True, True, True, False)
  assert seven.full_diagnostics and seven.stop(False) == "max_updates"
  assert update_plan.decide(capped, 7, last=True).stop(False) == "end"
  assert update_plan.decide(capped, 6, last=False).stop(True) == "target"
  assert update_plan.decide(capped, 4, last=True).stop(True) == "target"
  assert update_plan.decide(capped, 5, last=False).stop(False) is None


def test_a_noise_scale_decision_that_ends_the_run_revises_only_the_end():
  """The plan's batch decision follows the update's own estimate: the update
  computed what it was decided to; it then evaluates, checkpoints and ends."""
  cadence = update_plan.Cadence(0, 0, 0, 0, 0)
  before = update_plan.decide(cadence, 9, last=False)
  assert not before.full_diagnostics and before.stop(False) is None
  after = before.revised(cadence, last=True)
  assert (after.last, after.evaluate, after.checkpoint, after.full_diagnostics) == (
      True, True, True, False)
  assert after.stop(False) == "end"
