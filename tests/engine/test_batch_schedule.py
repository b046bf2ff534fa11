"""Batch-size schedules: the batches they promise, one compile per distinct
batch, the noise-scale rule, and bit-identical resume after kill -9."""

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import types

import jax
import ml_collections
import numpy as np
import pytest

from lbt.engine import batch_schedule, checkpoint, train
from lbt.engine import config as config_lib
from lbt.io import metrics
from lbt.stats import noise_scale
from lbt.engine import workdir as workdir_lib
from lbt.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def plan_of(schedule, *, batch=1000, pool=10000, micro=100, epochs=4.0, steps=0):
  """The plan of a run whose facts (what validation derives) are these."""
  spec = batch_schedule.section(ml_collections.ConfigDict({"batch_schedule": schedule}))
  facts = types.SimpleNamespace(
      batch_schedule=spec, train_examples=pool, microbatch_size=micro, num_epochs=epochs,
      num_train_steps=steps, batch_size=batch,
      batch_limits=batch_schedule.limits(spec, batch, micro, pool))
  return batch_schedule.create_plan(facts)


def run_plan(plan):
  slots = []
  while not plan.finished():
    slots.append(plan.take())
  return slots


def test_steps_schedule_gives_its_batches_at_its_epochs():
  # Pool 10,000: epoch 0 at 1000 (10 updates); from epoch 1 at 2000 (5);
  # epoch 2 at 2000 until 2.5 epochs are done (offsets 0, 2000, 4000: 3 updates),
  # then 4000 from offset 6000 (1 update); epoch 3: 2 updates of 4000, the last
  # 2000 examples dropped.
  plan = plan_of({"name": "steps", "epochs": [1, 2.5], "batch_sizes": [2000, 4000]})
  slots = run_plan(plan)
  assert [s.batch for s in slots] == [1000] * 10 + [2000] * 8 + [4000] * 3
  assert plan.examples() == plan.state()["examples"] == 38000
  assert [(s.epoch, s.offset) for s in slots[15:]] == [
      (2, 0), (2, 2000), (2, 4000), (2, 6000), (3, 0), (3, 4000)]
  assert sum(s.batch for s in slots) == 38000
  for s in slots:  # An update never straddles two epochs.
    assert s.offset + s.batch <= 10000


def test_constant_batch_counts_as_before():
  plan = batch_schedule.constant_plan(256, 60000, 700)
  slots = run_plan(plan)
  assert len(slots) == 700 and {s.batch for s in slots} == {256}
  # 234 updates per epoch, the last 96 examples of each epoch dropped.
  assert (slots[234].epoch, slots[234].offset) == (1, 0)
  assert (slots[233].epoch, slots[233].offset) == (0, 233 * 256)


def test_noise_scale_batch_follows_b_simple_at_its_decision_points():
  plan = plan_of({"name": "noise_scale", "factor": 2.0, "min_batch": 200,
                  "max_batch": 1000, "every": 3}, batch=200, micro=100, epochs=20)
  assert plan.take().batch == 200
  # Fewer estimates than the averages' time constant: no decision yet.
  plan.add_noise_estimates([1.0] * 19, [260.0] * 19)
  assert [plan.take().batch for _ in range(2)] == [200, 200]
  assert plan.is_decision_point() and plan.take().batch == 200
  # EMA ratio exactly tr/|G|^2 = 260: 2 x 260 = 520 -> 500.
  plan.add_noise_estimates([1.0], [260.0])
  assert [plan.take().batch for _ in range(2)] == [200, 200]
  assert plan.is_decision_point()
  assert plan.take().batch == 500
  plan.add_noise_estimates([1.0] * 200, [4000.0] * 200)  # B_simple -> ~4000
  assert [plan.take().batch for _ in range(2)] == [500, 500]
  assert plan.take().batch == 1000  # clipped to max_batch
  plan.add_noise_estimates([1.0] * 400, [10.0] * 400)  # B_simple -> ~10
  plan.take(), plan.take()
  assert plan.take().batch == 200  # clipped to min_batch
  assert plan.history == [[0, 200], [6, 500], [9, 1000], [12, 200]]


def test_noise_scale_keeps_its_batch_while_b_simple_is_undefined():
  plan = plan_of({"name": "noise_scale", "every": 1, "min_batch": 300}, batch=300,
                 micro=100)
  plan.take()
  plan.add_noise_estimates([-1.0] * 30, [5.0] * 30)  # |G|^2 negative: no ratio
  assert plan.take().batch == 300


def test_plan_state_round_trips_through_json():
  schedule = {"name": "steps", "epochs": [0.5], "batch_sizes": [3000]}
  plan = plan_of(schedule)
  for _ in range(7):
    plan.take()
  plan.add_noise_estimates([2.0, 3.0], [100.0, 50.0])
  again = plan_of(schedule)
  again.set_state(plan.state())
  assert run_plan(again) == run_plan(plan)
  assert again.noise == plan.noise
  with pytest.raises(ValueError, match="batch schedule"):
    plan_of({"name": "constant"}).set_state(plan.state())


@pytest.mark.parametrize("schedule,micro,field", [
    ({"name": "linear"}, 100, "batch_schedule.name"),
    ({"name": "steps", "epochs": [2, 1], "batch_sizes": [2, 3]}, 100, "batch_schedule.epochs"),
    ({"name": "steps", "epochs": [1], "batch_sizes": [2, 3]}, 100, "batch_schedule.batch_sizes"),
    ({"name": "steps", "epochs": [1], "batch_sizes": [70000]}, 100, "batch_schedule.batch_sizes"),
    ({"name": "steps", "epochs": [1], "batch_sizes": [512]}, 0, "microbatch_size"),
    ({"name": "steps", "epochs": [1], "batch_sizes": [512], "every": 3}, 100,
     "batch_schedule.every"),
    ({"name": "noise_scale", "factor": -1.0}, 64, "batch_schedule.factor"),
    ({"name": "noise_scale", "min_batch": 512, "max_batch": 256}, 64, "batch_schedule.max_batch"),
    ({"name": "noise_scale", "min_batch": 256}, 64, "batch_schedule.min_batch"),  # > batch
    ({"name": "noise_scale", "max_batch": 1000}, 64, "batch_schedule.max_batch"),  # not 64k
    ({"name": "steps", "epochs": [1, 3], "batch_sizes": [256, 512]}, 64,
     "batch_schedule.epochs"),  # 3 is not within the 3-epoch run
    ({"name": "noise_scale", "every": 0}, 64, "batch_schedule.every"),
    ({"name": "noise_scale"}, 128, "microbatch_size"),  # one microbatch at batch 128
])
def test_bad_schedules_name_their_field(make_config, schedule, micro, field):
  config = make_config("momentum,batch=128,model=mlp,epochs=3", microbatch_size=micro)
  config.batch_schedule = schedule
  with pytest.raises(ConfigError) as error:
    config_lib.validate(config, num_devices=8)
  assert error.value.field == field


def scheduled_config(make_config, schedule, **overrides):
  """The MLP on a pool of 1,000 examples (59,000 held out and never evaluated)."""
  fields = dict(microbatch_size=50, num_epochs=3.0, eval_every_steps=0, log_every_steps=4,
                checkpoint_every_steps=0, eval_batch_size=5000, schedule__warmup_epochs=0.5,
                dataset__validation_examples=59000)
  config = make_config("momentum,batch=100,model=mlp", **{**fields, **overrides})
  config.model.hidden_sizes = (32,)
  config.batch_schedule = schedule
  return config


def test_a_changing_batch_runs_for_epochs_not_updates(make_config):
  config = make_config("momentum,batch=128,model=mlp", microbatch_size=64, num_train_steps=9)
  config.batch_schedule = {"name": "steps", "epochs": [0.5], "batch_sizes": [256]}
  with pytest.raises(ConfigError) as error:
    config_lib.validate(config, num_devices=8)
  assert error.value.field == "num_train_steps"


def test_steps_schedule_trains_its_batches_and_compiles_once(make_config, tmp_path):
  config = scheduled_config(make_config, {"name": "steps", "epochs": [1.0, 2.0],
                                          "batch_sizes": [200, 500]})
  compiled = []

  class Collect(logging.Handler):
    def emit(self, record):
      compiled.append(record.getMessage())

  handler = Collect()
  logging.getLogger("jax").addHandler(handler)
  jax.config.update("jax_log_compiles", True)
  try:
    summary = train.train_and_evaluate(config, str(tmp_path))
  finally:
    jax.config.update("jax_log_compiles", False)
    logging.getLogger("jax").removeHandler(handler)
  records = metrics.read_jsonl(str(tmp_path), "train")
  assert [r["batch_size"] for r in records] == [100] * 10 + [200] * 5 + [500] * 2
  assert summary["num_train_steps"] == 17 and summary["examples"] == 3000
  # Every microbatch has 50 examples: one program each for start, add and
  # finish, whatever the batch (momentum does not read the microbatch count).
  done = [m for m in compiled if "Finished XLA compilation" in m]
  for name in ("start_update", "add_microbatch", "finish_update"):
    assert sum(f"jit({name})" in m for m in done) == 1, (name, done)
  # The learning rate follows the schedule in epochs: warmup over half an epoch
  # of batch 100 is 5 updates; cosine decay to 0 at epoch 3 whatever the batch.
  lr = [r["learning_rate"] for r in records]
  assert lr[4] == pytest.approx(max(lr)) and lr[3] < lr[4]
  assert lr[-1] < 0.1 * max(lr)


def test_noise_scale_schedule_sets_each_batch_from_the_logged_estimate(make_config,
                                                                       tmp_path):
  schedule = {"name": "noise_scale", "factor": 4.0, "min_batch": 100,
              "max_batch": 500, "every": 3}
  config = scheduled_config(make_config, schedule, num_epochs=6.0)
  train.train_and_evaluate(config, str(tmp_path))
  records = metrics.read_jsonl(str(tmp_path), "train")
  assert records[0]["batch_size"] == 100
  for before, now in zip(records, records[1:]):
    # Update `step` follows step - 1 estimates; decisions wait for 20.
    if (now["step"] - 1) % 3 or now["step"] - 1 < batch_schedule.MIN_ESTIMATES:
      assert now["batch_size"] == before["batch_size"]
    else:
      b = before["b_simple"]
      want = min(500, max(100, max(50, round(4 * b / 50) * 50)))
      assert now["batch_size"] == want, (now["step"], b)
  assert len({r["batch_size"] for r in records}) > 1  # it moved


CONFIG_FILE = """
from configs import fashion_mnist

def get_config(arg=None):
  config = fashion_mnist.get_config("momentum,batch=100,model=mlp")
  config.model.hidden_sizes = (32,)
  config.microbatch_size = 50
  config.num_epochs = {epochs}
  config.eval_every_steps = 0
  config.checkpoint_every_steps = 2
  config.log_every_steps = 1
  config.eval_batch_size = 5000
  config.schedule.warmup_epochs = 0.5
  config.dataset.validation_examples = 59000
  config.dataset.data_dir = {data_dir!r}
  config.batch_schedule = {schedule!r}
  return config
"""


def start(config_file, workdir, extra=(), fault=None):
  """lbt.main on the config; `fault`: the moment it stops at (LBT_FAULT)."""
  env = dict(os.environ, PYTHONPATH=REPO,
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  env.pop("LBT_FAULT", None)
  if fault:
    env["LBT_FAULT"] = fault
  return subprocess.Popen([sys.executable, "-m", "lbt.main", f"--config={config_file}",
                           f"--workdir={workdir}", *extra], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def final_state(workdir):
  state = checkpoint.load_state(str(workdir))
  return jax.tree.leaves(jax.tree.map(np.asarray, state)), int(state["step"])


@pytest.mark.parametrize("schedule,epochs,kill_after", [
    ({"name": "steps", "epochs": [1.0, 2.0], "batch_sizes": [200, 500]}, 3.0, 12),
    # Its first change can come at update 22 (after 21 estimates).
    ({"name": "noise_scale", "factor": 4.0, "min_batch": 100, "max_batch": 500,
      "every": 3}, 8.0, 26),
])
def test_sigkill_after_a_batch_change_resumes_bit_identically(data_dir, tmp_path, schedule,
                                                              epochs, kill_after):
  config_file = tmp_path / "config.py"
  config_file.write_text(CONFIG_FILE.format(data_dir=data_dir, schedule=schedule,
                                            epochs=epochs))
  workdir = tmp_path / "killed"
  # Killed after update kill_after + 1: the checkpoint of kill_after is the last.
  process = start(config_file, workdir, fault=f"update:{kill_after + 1}")
  process.communicate(timeout=400)
  assert process.returncode == -signal.SIGKILL
  killed_at = metrics.read_jsonl(str(workdir), "train")[-1]["step"]
  reference = start(config_file, tmp_path / "reference")
  resumed = start(config_file, workdir)
  out, err = resumed.communicate(timeout=400)
  assert reference.wait(timeout=400) == 0, reference.communicate()
  assert resumed.returncode == 0, err[-3000:]
  resumed_at = int(re.search(r"resumed from the checkpoint of update (\d+)", out).group(1))

  want, want_step = final_state(tmp_path / "reference")
  got, got_step = final_state(workdir)
  assert want_step == got_step and killed_at < want_step
  for a, b in zip(want, got):
    np.testing.assert_array_equal(a, b)
  batches = lambda w: [r["batch_size"] for r in metrics.read_jsonl(str(w), "train")]
  assert batches(workdir) == batches(tmp_path / "reference")
  history = batches(workdir)
  assert len(set(history[:resumed_at])) > 1  # it resumed after a batch change


def test_noise_scale_split_measures_b_simple_from_two_halves(make_config, tmp_path):
  config = make_config("momentum,batch=128,model=mlp", num_train_steps=6, eval_every_steps=0,
                       checkpoint_every_steps=0, eval_batch_size=5000,
                       schedule__warmup_epochs=0.01, noise_scale_split=True)
  config.model.hidden_sizes = (32,)
  train.train_and_evaluate(config, str(tmp_path))
  assert metrics.read_jsonl(str(tmp_path), "run")[0]["num_microbatches"] == 2
  records = metrics.read_jsonl(str(tmp_path), "train")
  assert len(records) == 6 and all(np.isfinite(r["noise_trace"]) for r in records)
  # Two halves of 64: tr(Σ) = (|g|²_mean − |G|²) / (1/64 − 1/128).
  first = records[0]
  assert "b_simple" in first and first["noise_trace"] > 0


def test_noise_scale_split_must_be_a_bool(make_config):
  fields = make_config("momentum,batch=128,model=mlp").to_dict()
  fields["noise_scale_split"] = 1  # e.g. a config file that writes its own dict
  config = ml_collections.ConfigDict(fields)
  with pytest.raises(ConfigError) as error:
    config_lib.validate(config, num_devices=8)
  assert error.value.field == "noise_scale_split"


def test_a_run_that_ends_at_a_noise_scale_decision_still_evaluates_and_saves(
    make_config, tmp_path, monkeypatch):
  """21 updates of 100 leave the third epoch at offset 100; the decision at
  update 21 (B_simple = 700, factor 2 -> max_batch 1,000) no longer fits the
  epoch, so that update ends a 2.5-epoch run, though the estimates before it
  (fewer than 20) said the batch stays 100."""
  monkeypatch.setattr(noise_scale, "gradient_noise_scale", lambda *args: (1.0, 700.0))
  schedule = {"name": "noise_scale", "factor": 2.0, "min_batch": 100, "max_batch": 1000,
              "every": 3}
  config = scheduled_config(make_config, schedule, num_epochs=2.5, log_every_steps=5,
                            checkpoint_every_steps=0)
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["num_train_steps"] == 21 and summary["examples"] == 2100
  assert [r["step"] for r in metrics.read_jsonl(str(tmp_path), "eval")] == [21]
  assert checkpoint.load_state(str(tmp_path))["step"] == 21


def test_a_workdir_written_before_these_fields_still_resumes(make_config, tmp_path):
  config = make_config("momentum,batch=128,model=mlp")
  older = config.to_dict()
  del older["noise_scale_split"]
  (tmp_path / "config.json").write_text(ml_collections.ConfigDict(older).to_json())
  workdir_lib.check_config(config, str(tmp_path), ())  # no change to refuse
  config.noise_scale_split = True
  with pytest.raises(ConfigError, match="noise_scale_split"):
    workdir_lib.check_config(config, str(tmp_path), ())


def test_two_processes_take_the_same_noise_scale_batches(data_dir, tmp_path):
  """Each process decides the batch from its own copy of the replicated
  metrics; a save compares their plans' digests and fails on any difference."""
  schedule = {"name": "noise_scale", "factor": 4.0, "min_batch": 100, "max_batch": 500,
              "every": 3}
  config_file = tmp_path / "config.py"
  config_file.write_text(CONFIG_FILE.format(data_dir=data_dir, schedule=schedule,
                                            epochs=4.0))
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  processes = [start(config_file, tmp_path / "run",
                     [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                      f"--process_id={i}"]) for i in range(2)]
  errors = [p.communicate(timeout=400)[1] for p in processes]
  assert [p.returncode for p in processes] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
  batches = [r["batch_size"] for r in metrics.read_jsonl(str(tmp_path / "run"), "train")]
  assert len(set(batches)) > 1  # the batch moved, on both processes alike
  assert sum(batches) <= 4 * 1000
