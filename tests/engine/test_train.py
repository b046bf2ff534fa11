"""End to end on real Fashion-MNIST: accuracy, resume, metrics, evaluation."""

import json
import os
import sys

import jax
import numpy as np
import pytest

from lbt.engine import checkpoint, train
from lbt.io import metrics
from lbt.engine import workdir as workdir_lib


def params_of(workdir):
  return jax.tree.map(np.asarray, checkpoint.load_state(workdir)["params"])


def small(make_config, **overrides):
  """A quick run: the MLP, 12 updates of 128 examples, checkpoints every 4."""
  args = dict(batch_size=128, num_train_steps=12,
              schedule__warmup_epochs=0.01, checkpoint_every_steps=4,
              log_every_steps=5, eval_batch_size=3000)
  args.update(overrides)
  return make_config("momentum,model=mlp", **args)


def test_lenet5_reaches_85_percent(make_config, tmp_path):
  config = make_config("momentum,batch=256,epochs=1", schedule__warmup_epochs=0.1)
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["eval_count"] == 10000
  assert summary["eval_accuracy"] >= 0.85, summary


def test_workdir_records_config_metrics_and_checkpoints(make_config, tmp_path):
  config = small(make_config)
  summary = train.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "config.json") as f:
    assert json.load(f) == json.loads(config.to_json())
  records = metrics.read_jsonl(str(tmp_path), "train")
  assert [r["step"] for r in records] == list(range(1, 13))
  for key in ("loss", "accuracy", "learning_rate", "grad_norm"):
    assert all(np.isfinite(r[key]) for r in records), key
  # The full diagnostics on the updates that log (5, 10), checkpoint (4, 8) or end.
  full = [r for r in records if "distance_from_init" in r]
  assert [r["step"] for r in full] == [4, 5, 8, 10, 12]
  assert all(np.isfinite(r["distance_from_init"]) and r["distance_from_init"] > 0 for r in full)
  run = metrics.read_jsonl(str(tmp_path), "run")[0]
  assert run["effective_learning_rate"] == pytest.approx(0.1 * 128 / 256)
  evals = metrics.read_jsonl(str(tmp_path), "eval")
  assert evals[-1]["count"] == 10000
  assert evals[-1]["accuracy"] == pytest.approx(summary["eval_accuracy"])
  assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints")
                if d.isdigit()) == [4, 8, 12]
  assert os.listdir(tmp_path / "tensorboard")

  # Eval in batches of 3000 pads and masks the fourth; in one batch of 10000
  # nothing is padded. Both must see the same 10000 examples once.
  config.eval_batch_size = 10000
  unpadded = train.train_and_evaluate(config, str(tmp_path),
                                      allow_config_change=["eval_batch_size"])
  assert unpadded["eval_count"] == summary["eval_count"] == 10000
  assert unpadded["eval_accuracy"] == summary["eval_accuracy"]
  assert unpadded["eval_loss"] == pytest.approx(summary["eval_loss"], rel=1e-6)


def test_interrupted_run_resumes_and_finishes_identically(make_config, tmp_path,
                                                          monkeypatch):
  config = small(make_config)
  reference = train.train_and_evaluate(config, str(tmp_path / "reference"))

  # Crash while saving update 12: the metrics of 9-12 are written, the last
  # checkpoint is update 8.
  real_save = checkpoint.save
  def crash_after_eight(manager, step, state, iterator):
    if step == 12:
      raise KeyboardInterrupt("simulated crash")
    real_save(manager, step, state, iterator)
  monkeypatch.setattr(checkpoint, "save", crash_after_eight)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config, str(tmp_path / "resumed"))
  monkeypatch.setattr(checkpoint, "save", real_save)
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))

  assert resumed["eval_loss"] == reference["eval_loss"]
  for a, b in zip(jax.tree.leaves(params_of(tmp_path / "reference")),
                  jax.tree.leaves(params_of(tmp_path / "resumed"))):
    np.testing.assert_array_equal(a, b)
  # Updates 9-12 ran twice; metrics.jsonl keeps one line for each update.
  steps = [r["step"] for r in metrics.read_jsonl(str(tmp_path / "resumed"), "train")]
  assert steps == list(range(1, 13))


def test_accumulation_and_ghost_bn_run_end_to_end(make_config, tmp_path):
  config = small(make_config, microbatch_size=32, bn__ghost_size=16,
                 num_train_steps=3, checkpoint_every_steps=0,
                 schedule__warmup_epochs=0.0)
  summary = train.train_and_evaluate(config, str(tmp_path))
  run = metrics.read_jsonl(str(tmp_path), "run")[0]
  assert run["num_microbatches"] == 4 and summary["eval_count"] == 10000
  # The gradient noise scale comes with accumulation (McCandlish et al. 2018).
  for record in metrics.read_jsonl(str(tmp_path), "train"):
    assert record["noise_trace"] > 0 and np.isfinite(record["noise_grad_sq"])
    assert np.isfinite(record["b_simple"])


def test_a_batch_that_does_not_divide_the_devices_trains(make_config, tmp_path):
  """1,001 examples per update in microbatches of 336 on 8 devices (padded)."""
  config = small(make_config, batch_size=1001, microbatch_size=336, num_train_steps=2,
                 checkpoint_every_steps=0)
  summary = train.train_and_evaluate(config, str(tmp_path))
  run = metrics.read_jsonl(str(tmp_path), "run")[0]
  assert run["num_microbatches"] == 3 and summary["eval_count"] == 10000
  assert all(np.isfinite(r["loss"]) for r in metrics.read_jsonl(str(tmp_path), "train"))


def test_a_workdir_from_before_a_new_field_still_resumes(make_config, tmp_path):
  """Fields added later (validation hold-out, ConAdv) read as their absence."""
  config = make_config("momentum,model=mlp")
  old = json.loads(config.to_json())
  del old["dataset"]["validation_examples"], old["dataset"]["image_size"]
  old["loss"].pop("adversarial", None)
  (tmp_path / "config.json").write_text(json.dumps(old))
  workdir_lib.check_config(config, str(tmp_path), ())
  if "adversarial" in config.loss:
    config.loss.adversarial.enabled = True
    with pytest.raises(train.ConfigError, match="loss.adversarial"):
      workdir_lib.check_config(config, str(tmp_path), ())


def test_object_store_workdirs_lbt_cannot_write_are_refused_not_made_local(monkeypatch):
  # gs:// itself is written through epath: tests/io/test_remote_workdir.py.
  with pytest.raises(train.ConfigError, match="--workdir='s3://bucket/run'.*gs://BUCKET/DIR"):
    workdir_lib.check_location("s3://bucket/run")
  monkeypatch.setitem(sys.modules, "google.cloud.storage", None)  # gs:// packages missing
  if "google.cloud" in sys.modules:
    monkeypatch.delattr(sys.modules["google.cloud"], "storage", raising=False)
  with pytest.raises(train.ConfigError, match=r"pip install 'lbt\[gcs\]'"):
    workdir_lib.check_location("gs://bucket/run")
