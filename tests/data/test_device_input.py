"""A run whose data stays on the devices (lbt.data.device_input) trains
exactly as one fed by the host pipeline: the same batches, the same state to
the bit, whatever the updates each dispatch runs."""

import os

import jax
import numpy as np
import pytest

from lbt import data
from lbt.data import device_input
from lbt.engine import batch_schedule, checkpoint, parallel, step, train
from lbt.errors import ConfigError
from lbt.io import metrics
from lbt.io.preemption import PreemptionNotice


def records(workdir):
  """metrics.jsonl without wall times."""
  return [{k: v for k, v in r.items()
           if k not in ("time", "wall_time_s", "examples_per_second")}
          for r in metrics.read_jsonl(workdir)]


def final_state(workdir):
  return [np.asarray(x) for x in jax.tree.leaves(checkpoint.load_state(workdir))]


def train_on(path, config, workdir, monkeypatch, devices=None, **kwargs):
  """Trains `config` with LBT_INPUT=`path`, on `devices` (default: all 8)."""
  monkeypatch.setenv("LBT_INPUT", path)
  if devices is None:
    return train.train_and_evaluate(config, workdir, **kwargs)
  with PreemptionNotice() as notice:
    placement = train.Placement(jax.local_devices()[:devices], notice)
    return train.train_and_evaluate(config, workdir, placement=placement, **kwargs)


def study_mlp(make_config, batch, steps, **overrides):
  """The default study's MLP (BatchNorm), with validation, logging every 7
  updates, evaluating every 10 and checkpointing every 12."""
  args = dict(batch_size=batch, num_train_steps=steps, model__hidden_sizes=(32, 32),
              dataset__validation_examples=10000, schedule__warmup_epochs=0.01,
              log_every_steps=7, eval_every_steps=10, checkpoint_every_steps=12,
              eval_batch_size=3000)
  args.update(overrides)
  return make_config("momentum,model=mlp", **args)


@pytest.mark.parametrize("batch,micro,devices", [
    (128, 0, 8),    # several updates a dispatch, on 8 devices
    (128, 0, 1),    # and on one
    (100, 0, 8),    # padded to 104 on 8 devices: one update a dispatch, masked
    (256, 64, 8),   # 4 microbatches accumulated
])
def test_either_input_trains_the_same_to_the_bit(make_config, tmp_path, monkeypatch,
                                                  batch, micro, devices):
  config = study_mlp(make_config, batch, 26, microbatch_size=micro)
  runs = {}
  for path in ("pipeline", "device"):
    workdir = str(tmp_path / path)
    train_on(path, config, workdir, monkeypatch, devices)
    runs[path] = records(workdir), final_state(workdir)
  (lines, state), (device_lines, device_state) = runs["pipeline"], runs["device"]
  assert [r["kind"] for r in lines].count("eval") == 3  # updates 10, 20, 26
  assert device_lines == lines
  for a, b in zip(state, device_state, strict=True):
    np.testing.assert_array_equal(a, b)


def test_a_capped_run_resumed_on_the_device_input_ends_as_one_uninterrupted(
    make_config, tmp_path, monkeypatch):
  """Stopped at update 13 (between two logs) and resumed, its dispatches
  start elsewhere than an uninterrupted run's: the results are the same."""
  config = study_mlp(make_config, 128, 30)
  whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
  train_on("device", config, whole, monkeypatch)
  capped = train_on("device", config, parts, monkeypatch, max_updates=13)
  assert capped["num_train_steps"] == 13
  train_on("device", config, parts, monkeypatch)
  # The capped update 13 wrote its full diagnostics too (it checkpointed).
  lean = lambda r: {k: v for k, v in r.items() if k not in step.FULL_DIAGNOSTICS}
  assert [lean(r) for r in records(parts) if r["kind"] == "train"] == [
      lean(r) for r in records(whole) if r["kind"] == "train"]
  for a, b in zip(final_state(whole), final_state(parts), strict=True):
    np.testing.assert_array_equal(a, b)


def test_batches_gathered_on_the_devices_are_the_pipelines(data_dir):
  pipeline = data.Pipeline(
      data.DATASETS.get("fashion_mnist"), data_dir=data_dir, cache=True, seed=3,
      batch_size=100, microbatch_size=100, steps_per_epoch=500, eval_batch_size=3000,
      validation_examples=10000, num_devices=8)
  assert device_input.unavailable(pipeline) is None
  mesh = parallel.create_mesh()
  held = device_input.DeviceData(pipeline, parallel.replicated(mesh),
                                 parallel.batch_sharding(mesh))
  plan = batch_schedule.constant_plan(100, len(pipeline.train_batches.pool), 1000)
  host, device = pipeline.train_stream(plan), held.train_stream(
      batch_schedule.constant_plan(100, len(pipeline.train_batches.pool), 1000))
  for _ in range(3):
    assert host.next_update() == device.next_update()
    want, got = next(host), jax.device_get(next(device))
    assert sorted(got) == sorted(want) == ["image", "label", "mask"]  # 100 -> 104
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  for want_batches, got_batches in ((pipeline.eval_batches(), held.eval_batches()),
                                    (pipeline.validation_batches(), held.validation_batches())):
    pairs = list(zip(want_batches, got_batches, strict=True))
    assert len(pairs) == 4  # 10,000 in batches of 3,000: the last padded
    for want, got in pairs:
      for key in want:
        np.testing.assert_array_equal(jax.device_get(got[key]), want[key])


def test_lbt_input_is_checked_and_device_refused_where_data_cannot_stay(
    make_config, tmp_path, monkeypatch):
  config = make_config("momentum,model=mlp", num_train_steps=2)
  monkeypatch.setenv("LBT_INPUT", "gpu")
  with pytest.raises(ConfigError, match="LBT_INPUT.*auto, device, pipeline"):
    train.train_and_evaluate(config, str(tmp_path / "bad"))
  config.dataset.cache = False  # Records decoded as they are read: not on the devices.
  monkeypatch.setenv("LBT_INPUT", "device")
  with pytest.raises(ConfigError, match="LBT_INPUT.*dataset.cache"):
    train.train_and_evaluate(config, str(tmp_path / "uncached"))
  assert not os.path.exists(tmp_path / "uncached" / "checkpoints")
