"""Reliability: kill -9 and SIGTERM resume exactly, divergence stops cleanly,
damaged checkpoints fall back, and results do not depend on the device count.
"""

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lbt.io import layout
from lbt.engine import checkpoint, train
from lbt import errors
from lbt.io import metrics
from lbt.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# 10 updates per epoch at batch 6000; a tiny MLP keeps each update cheap.
CONFIG_FILE = """
from configs import fashion_mnist

def get_config(arg=None):
  config = fashion_mnist.get_config("momentum,batch=6000,model=mlp")
  config.model.hidden_sizes = (64,)
  config.num_train_steps = {num_steps}
  config.schedule.warmup_epochs = 0.3
  config.checkpoint_every_steps = 4
  config.log_every_steps = 1
  config.eval_batch_size = 5000
  config.dataset.data_dir = {data_dir!r}
  return config
"""


def write_config_file(tmp_path, data_dir, num_steps=25):
  path = tmp_path / "config_under_test.py"
  path.write_text(CONFIG_FILE.format(num_steps=num_steps, data_dir=data_dir))
  return str(path)


def start(config_file, workdir, devices=8, extra=(), fault=None):
  """lbt.main on the config; `fault`: the moment it stops at (LBT_FAULT,
  lbt.io.faults), e.g. "update:6" (killed after its 6th update)."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             PYTHONPATH=REPO)
  env.pop("LBT_FAULT", None)
  if fault:
    env["LBT_FAULT"] = fault
  return subprocess.Popen(
      [sys.executable, "-m", "lbt.main", f"--config={config_file}",
       f"--workdir={workdir}", *extra],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def last_logged_update(workdir):
  records = metrics.read_jsonl(str(workdir), "train") if os.path.exists(
      os.path.join(workdir, layout.METRICS)) else []
  return records[-1]["step"] if records else 0


def final_params(workdir):
  state = checkpoint.load_state(str(workdir))
  return [np.asarray(x) for x in jax.tree.leaves(state["params"])], int(state["step"])


def test_sigkill_at_three_updates_then_resume_is_bit_identical(data_dir, tmp_path):
  config_file = write_config_file(tmp_path, data_dir)
  reference = start(config_file, tmp_path / "reference")
  assert reference.wait() == 0, reference.communicate()

  workdir = tmp_path / "killed"
  # Update 6 is mid-epoch, 10 ends epoch 1, 17 is mid-epoch 2. Each run
  # resumes from the checkpoint before its kill (every 4 updates) and counts
  # its updates from there.
  for update, resumed in ((6, 0), (10, 4), (17, 8)):
    process = start(config_file, workdir, fault=f"update:{update - resumed}")
    process.communicate(timeout=400)
    assert process.returncode == -signal.SIGKILL
    saved = max(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    assert saved == update - update % 4  # Killed after that update, not later.
  process = start(config_file, workdir)
  out, err = process.communicate()
  assert process.returncode == 0, err
  assert "resumed from the checkpoint" in out

  want, want_step = final_params(tmp_path / "reference")
  got, got_step = final_params(workdir)
  assert want_step == got_step == 25
  for a, b in zip(want, got):
    np.testing.assert_array_equal(a, b)


def test_sigterm_checkpoints_at_the_next_update_and_resumes(data_dir, tmp_path):
  config_file = write_config_file(tmp_path, data_dir, num_steps=40)
  workdir = tmp_path / "preempted"
  process = start(config_file, workdir, fault="update:5:TERM")  # As update 5 ends.
  out, err = process.communicate(timeout=400)
  assert process.returncode == 143, err
  saved = max(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
  assert saved == 5 and "SIGTERM: saved the checkpoint of update" in err
  assert f"update {saved}" in err
  # Every update logged before the signal is in that checkpoint.
  assert saved == last_logged_update(workdir)
  process = start(config_file, workdir)
  out, err = process.communicate()
  assert process.returncode == 0 and f"update {saved}" in out


def test_divergence_stops_with_a_clear_message_and_keeps_the_checkpoint(
    make_config, tmp_path):
  # The LR ramps up during warmup to 1e3: the first updates are fine, then
  # the parameters blow up until a norm overflows.
  config = make_config("sgd,batch=6000,model=mlp", num_train_steps=12,
                       checkpoint_every_steps=2, log_every_steps=1,
                       eval_batch_size=5000, schedule__warmup_epochs=1.0)
  config.optimizer.learning_rate = 1e3
  with pytest.raises(errors.Diverged) as info:
    train.train_and_evaluate(config, str(tmp_path))
  error = info.value
  assert error.update > 2 and error.learning_rate > 0
  message = str(error)
  assert f"diverged at update {error.update}" in message
  assert "learning_rate=" in message and "loss=" in message
  assert error.last_checkpoint is not None and error.last_checkpoint < error.update
  assert f"update {error.last_checkpoint}" in message
  state = checkpoint.load_state(str(tmp_path), error.last_checkpoint)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))
  assert int(state["step"]) == error.last_checkpoint
  diverged = metrics.read_jsonl(str(tmp_path), "diverged")
  assert [r["step"] for r in diverged] == [error.update]
  records = metrics.read_jsonl(str(tmp_path), "train")
  assert records[-1]["step"] == error.update and records[-1]["finite"] is False


def small_run(make_config, **overrides):
  args = dict(batch_size=6000, num_train_steps=12,
              schedule__warmup_epochs=0.2, checkpoint_every_steps=4,
              eval_batch_size=5000, checkpoint_keep=5)
  args.update(overrides)
  config = make_config("momentum,model=mlp", **args)
  config.model.hidden_sizes = (64,)
  return config


@pytest.mark.parametrize("damage", ["truncate_file", "delete_directory"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(
    make_config, tmp_path, capsys, damage):
  config = small_run(make_config)
  reference = train.train_and_evaluate(config, str(tmp_path / "reference"))

  workdir = tmp_path / "damaged"
  train.train_and_evaluate(small_run(make_config, num_train_steps=12), str(workdir))
  # Damage the last checkpoint: the run must restore update 8 and redo 9-12.
  latest = workdir / "checkpoints" / "12" / "state"
  if damage == "truncate_file":
    files = sorted((p for p in latest.rglob("*") if p.is_file() and p.stat().st_size > 0),
                   key=lambda p: -p.stat().st_size)
    with open(files[0], "r+b") as f:
      f.truncate(files[0].stat().st_size // 2)
  else:
    shutil.rmtree(latest)
  capsys.readouterr()
  resumed = train.train_and_evaluate(config, str(workdir))
  out = capsys.readouterr().out
  assert "checkpoint of update 12 does not restore" in out
  assert "resumed from the checkpoint of update 8" in out
  assert resumed["eval_loss"] == reference["eval_loss"]
  # The damaged checkpoint was replaced by a fresh one of the same update.
  assert final_params(workdir)[1] == 12


def test_no_restorable_checkpoint_is_an_error_not_a_silent_restart(make_config, tmp_path):
  config = small_run(make_config, num_train_steps=4, checkpoint_every_steps=0)
  train.train_and_evaluate(config, str(tmp_path))
  shutil.rmtree(tmp_path / "checkpoints" / "4" / "state")
  with pytest.raises(ConfigError, match="--workdir"):
    train.train_and_evaluate(config, str(tmp_path))


def test_disk_full_on_save_is_reported_and_keeps_the_previous_checkpoint(
    make_config, tmp_path, monkeypatch):
  config = small_run(make_config)
  real_save = ocp.CheckpointManager.save
  def save_until_disk_full(self, step, *args, **kwargs):
    if step >= 8:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_save(self, step, *args, **kwargs)
  monkeypatch.setattr(ocp.CheckpointManager, "save", save_until_disk_full)
  with pytest.raises(checkpoint.CheckpointSaveError) as info:
    train.train_and_evaluate(config, str(tmp_path))
  assert "No space left on device" in str(info.value)
  assert "update 8" in str(info.value) and "last complete checkpoint is update 4" in str(info.value)
  monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
  state = checkpoint.load_state(str(tmp_path))
  assert int(state["step"]) == 4


def test_same_config_twice_is_bit_identical(make_config, tmp_path):
  config = small_run(make_config, num_train_steps=5, checkpoint_every_steps=0)
  train.train_and_evaluate(config, str(tmp_path / "a"))
  train.train_and_evaluate(config, str(tmp_path / "b"))
  for a, b in zip(final_params(tmp_path / "a")[0], final_params(tmp_path / "b")[0]):
    np.testing.assert_array_equal(a, b)


def free_port():
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def test_device_and_process_counts_agree(data_dir, tmp_path):
  """1 device, 8 devices, and 2 processes x 4 devices (jax.distributed + gloo)."""
  config_file = write_config_file(tmp_path, data_dir, num_steps=6)
  port = free_port()
  runs = [start(config_file, tmp_path / "devices1", devices=1),
          start(config_file, tmp_path / "devices8", devices=8)]
  runs += [start(config_file, tmp_path / "processes2", devices=4,
                 extra=[f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                        f"--process_id={i}"]) for i in range(2)]
  for process in runs:
    out, err = process.communicate(timeout=400)
    assert process.returncode == 0, err[-2000:]
  names = ("devices1", "devices8", "processes2")
  params = {n: final_params(tmp_path / n)[0] for n in names}
  losses = {n: [r["loss"] for r in metrics.read_jsonl(str(tmp_path / n), "train")]
            for n in names}
  for n in names[1:]:
    np.testing.assert_allclose(losses[n], losses["devices1"], atol=1e-5)
    for a, b in zip(params[n], params["devices1"]):
      np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_sigterm_on_one_host_of_two_saves_the_same_update_on_both_and_resumes(
    data_dir, tmp_path):
  """JAX's preemption service: the host that got SIGTERM tells the other, both
  save the same next update and exit 143; the rerun finishes bit-identical to an
  uninterrupted two-process run."""
  config_file = write_config_file(tmp_path, data_dir, num_steps=14)

  def two_processes(workdir, fault_on_1=None):
    port = free_port()
    return [start(config_file, workdir, devices=4,
                  extra=[f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                         f"--process_id={i}"], fault=fault_on_1 if i else None)
            for i in range(2)]

  reference = two_processes(tmp_path / "reference")
  for process in reference:
    assert process.wait(timeout=400) == 0, process.communicate()[1][-2000:]
  runs = two_processes(tmp_path / "preempted", "update:3:TERM")  # not process 0
  errors = [p.communicate(timeout=240)[1] for p in runs]
  assert [p.returncode for p in runs] == [143, 143], errors[0][-1500:] + errors[1][-1500:]
  saved = [int(e.split("saved the checkpoint of update ")[1].split(";")[0].split()[0])
           for e in errors]
  assert saved[0] == saved[1] and 3 <= saved[0] < 14
  for process in two_processes(tmp_path / "preempted"):
    assert process.wait(timeout=400) == 0
  want, want_step = final_params(tmp_path / "reference")
  got, got_step = final_params(tmp_path / "preempted")
  assert want_step == got_step == 14
  for a, b in zip(want, got):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fault,saved", [
    ("start:1:INT", []), ("setup:1:INT", []), ("update:1:INT", []),
    ("checkpoint:1:INT", ["4"])])
def test_ctrl_c_at_each_moment_of_a_run_exits_130_with_one_line(data_dir, tmp_path, fault,
                                                                saved):
  """Before the flags are read and JAX starts, once the run is set up (the
  state restored, nothing compiled), after its first update (compiled; in the
  loop Ctrl-C stops at the end of the update) and after a checkpoint, which
  stays the last one."""
  config_file = write_config_file(tmp_path, data_dir, num_steps=12)
  process = start(config_file, tmp_path / "run", fault=fault)
  _, err = process.communicate(timeout=300)
  assert process.returncode == 130, err[-2000:]
  assert "Traceback" not in err and "Segmentation" not in err, err[-2000:]
  assert len([l for l in err.splitlines() if l.startswith("lbt: interrupted")]) == 1, err
  checkpoints = tmp_path / "run" / "checkpoints"
  found = os.listdir(checkpoints) if checkpoints.exists() else []
  assert sorted(d for d in found if d.isdigit()) == saved


def test_two_trainers_on_one_workdir_one_runs_the_other_is_refused(data_dir, tmp_path):
  """Started together with one config, and a second started later with another:
  one trainer owns the workdir; the others exit 2 with one line, touching nothing."""
  config_file = write_config_file(tmp_path, data_dir, num_steps=12)
  workdir = tmp_path / "shared"
  pair = [start(config_file, workdir), start(config_file, workdir)]
  deadline = time.time() + 240
  while last_logged_update(workdir) < 2 and time.time() < deadline:
    time.sleep(0.1)
  other_dir = tmp_path / "other"
  other_dir.mkdir()
  other_file = write_config_file(other_dir, data_dir, num_steps=13)
  late = start(other_file, workdir)
  outcomes = [p.communicate(timeout=400) for p in pair + [late]]
  codes = [p.returncode for p in pair + [late]]
  assert sorted(codes[:2]) == [0, 2] and codes[2] == 2, [o[1][-800:] for o in outcomes]
  refused = outcomes[codes.index(2)][1]
  assert "pid" in refused and "Traceback" not in refused
  assert "changed: num_train_steps" in outcomes[2][1]
  steps = [r["step"] for r in metrics.read_jsonl(str(workdir), "train")]
  assert steps == list(range(1, 13))


def test_a_resume_on_another_device_count_says_so_and_records_it(data_dir, tmp_path):
  workdir = tmp_path / "run"
  first = start(write_config_file(tmp_path, data_dir, num_steps=4), workdir, devices=8)
  assert first.wait(timeout=300) == 0
  longer = tmp_path / "longer"
  longer.mkdir()
  second = start(write_config_file(longer, data_dir, num_steps=6), workdir, devices=4,
                 extra=["--allow_config_change=num_train_steps"])
  out, err = second.communicate(timeout=300)
  assert second.returncode == 0, err[-2000:]
  assert "resuming on 4 devices (was 8)" in out
  runs = metrics.read_jsonl(str(workdir), "run")
  assert runs[-1]["num_devices"] == 4 and runs[-1]["previous_num_devices"] == 8
