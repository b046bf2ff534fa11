"""Checkpoints prove their integrity: damaged bytes or an edited data position
are found at restore, the run falls back to the previous checkpoint and still
finishes bit-identical to an uninterrupted run; a full disk at save time is
one line that keeps the operating system's text whole.
"""

import json
import os
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lbt.engine import checkpoint, train
from lbt import errors
from lbt.io import logs


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
  """A 12-update MLP run with checkpoints 4, 8, 12: the uninterrupted reference."""
  from configs import fashion_mnist
  config = fashion_mnist.get_config("momentum,model=mlp")
  config.dataset.data_dir = data_dir
  config.model.hidden_sizes = (64,)
  config.batch_size, config.num_train_steps = 6000, 12
  config.schedule.warmup_epochs, config.checkpoint_every_steps = 0.2, 4
  config.eval_batch_size, config.checkpoint_keep = 5000, 5
  path = tmp_path_factory.mktemp("finished")
  summary = train.train_and_evaluate(config, str(path))
  return config, path, summary


def final_params(path, step=None):
  state = checkpoint.load_state(str(path), step)
  return [np.asarray(x) for x in jax.tree.leaves(state["params"])], int(state["step"])


def flip_bytes(path):
  """Inverts 8 bytes in the middle of the largest file of a checkpoint's state."""
  files = sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  largest = files[-1]
  with open(largest, "r+b") as f:
    f.seek(largest.stat().st_size // 2)
    chunk = f.read(8)
    f.seek(-8, os.SEEK_CUR)
    f.write(bytes(b ^ 0xFF for b in chunk))


def edit_data_position(path):
  (data_file,) = path.glob("process_0-of-1.json")
  position = json.loads(data_file.read_text())
  key = next(k for k, v in position.items() if isinstance(v, int) and v > 0)
  position[key] -= 1
  data_file.write_text(json.dumps(position))


@pytest.mark.parametrize("damage, item, problem", [
    (flip_bytes, "state", "checksum mismatch in "),
    (edit_data_position, "data", "checksum mismatch in the data position")])
def test_damaged_latest_checkpoint_falls_back_and_finishes_bit_identical(
    finished_run, tmp_path, capsys, damage, item, problem):
  config, reference, summary = finished_run
  copy = tmp_path / "damaged"
  shutil.copytree(reference, copy)
  damage(copy / "checkpoints" / "12" / item)
  if damage is flip_bytes:  # Analysis refuses it too.
    with pytest.raises(checkpoint.CheckpointRestoreError, match="update 12 .* damaged"):
      checkpoint.load_state(str(copy), 12)

  capsys.readouterr()
  resumed = train.train_and_evaluate(config, str(copy))
  out = capsys.readouterr().out
  assert f"checkpoint of update 12 does not restore ({problem}" in out
  assert "resumed from the checkpoint of update 8" in out
  want, want_step = final_params(reference)
  got, got_step = final_params(copy)
  assert want_step == got_step == 12
  for a, b in zip(want, got):
    np.testing.assert_array_equal(a, b)
  assert resumed["eval_loss"] == summary["eval_loss"]


def test_digests_match_an_independent_sha256_and_name_the_changed_array():
  import hashlib
  state = {"a": jnp.arange(6, dtype=jnp.float32).reshape(2, 3), "b": [jnp.int32(7)]}
  record = checkpoint.state_digests(state)
  want = hashlib.sha256(b"<f4(2, 3)" + np.arange(6, dtype="<f4").tobytes()).hexdigest()
  assert record == {"a": want, "b/0": hashlib.sha256(
      b"<i4()" + np.int32(7).tobytes()).hexdigest()}
  changed = {"a": state["a"].at[1, 2].set(5.000001), "b": state["b"]}
  problem = checkpoint.verify({"version": 1, "arrays": record}, changed)
  assert problem == "checksum mismatch in a"
  assert checkpoint.verify({"version": 1, "arrays": record}, state) is None
  assert "no checksum record" in checkpoint.verify(None, state)


def mounted_tmpfs(path, size):
  os.makedirs(path, exist_ok=True)
  result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
  if result.returncode:
    pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip()})")
  return path


def test_disk_full_at_save_is_one_line_with_the_cause_whole(tmp_path, capfd):
  import grain
  mount = mounted_tmpfs(tmp_path / "small", "200k")
  try:
    data = iter(grain.MapDataset.range(10).to_iter_dataset())
    next(data)
    with logs.capture_logs(str(tmp_path)) as log:
      manager = checkpoint.create_manager(str(mount), keep=3)
      checkpoint.save(manager, 1, {"w": jnp.ones((10,))}, data)
      big = {"w": jax.random.normal(jax.random.PRNGKey(0), (100_000,))}  # 400 kB
      with pytest.raises(checkpoint.CheckpointSaveError) as info:
        checkpoint.save(manager, 2, big, data)
      manager.close()
    message = str(info.value)
    assert isinstance(info.value, errors.WriteError)
    assert "\n" not in message
    assert "checkpoint of update 2" in message
    assert "No space left on device (ENOSPC)" in message
    assert message.endswith("the last complete checkpoint is update 1")
    assert "Traceback" not in capfd.readouterr().err
    with open(log) as f:
      assert "No space left on device" in f.read()
    # The partial save is gone; update 1 restores intact.
    assert os.listdir(mount / "checkpoints") == ["1"]
    manager = checkpoint.create_manager(str(mount), keep=3)
    restored = checkpoint.restore(manager, checkpoint.abstract({"w": jnp.ones((10,))}), data)
    assert restored[1] == 1
    manager.close()
  finally:
    subprocess.run(["umount", "--lazy", str(mount)], check=False)


def test_save_error_pickles_with_its_fields():
  import pickle
  error = checkpoint.CheckpointSaveError(8, "/w/checkpoints", "No space left on device "
                                         "(ENOSPC)", 4)
  again = pickle.loads(pickle.dumps(error))
  assert str(again) == str(error) and again.step == 8 and again.last == 4
