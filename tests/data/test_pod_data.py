"""CIFAR-10 and ImageNet through the real pipeline, on tfds.testing.mock_data."""

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from lbt.data import DATASETS, Pipeline  # noqa: E402


@pytest.fixture
def mock_tfds(monkeypatch):
  """mock_data whose data_source also serves __getitems__ (tfds 4.9.x sets it
  on a MagicMock as a plain attribute, so it arrives without `self`)."""
  from tensorflow_datasets.testing import mocking
  original = mocking._getitems

  def getitems(self_or_keys, record_keys=None, *args, **kwargs):
    if record_keys is None:
      self_or_keys, record_keys = None, self_or_keys
    return original(self_or_keys, record_keys, *args, **kwargs)

  monkeypatch.setattr(mocking, "_getitems", getitems)
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=96):
    yield


def pipelines(name, tmp_path, count, **kw):
  args = dict(data_dir=str(tmp_path), cache=False, seed=5, batch_size=32,
              microbatch_size=16, steps_per_epoch=96 // 32, eval_batch_size=24,
              image_size=16, num_devices=8)
  args.update(kw)
  return [Pipeline(DATASETS.get(name), process_index=p, process_count=count, **args)
          for p in range(count)]


@pytest.mark.parametrize("name", ["cifar10", "imagenet2012"])
def test_processes_read_disjoint_parts_and_augmentation_is_seeded(name, mock_tfds,
                                                                  tmp_path):
  one = pipelines(name, tmp_path, 1)[0]
  two = pipelines(name, tmp_path, 2)
  for update in (0, 1):
    for k in range(2):
      element = update * 2 + k
      whole = one.train_batches(element)
      parts = [p.train_batches(element) for p in two]
      assert whole["image"].shape == (16, 16, 16, 3)
      indices = [p.train_batches.microbatch_indices(update, k) for p in two]
      assert not np.intersect1d(*indices).size
      np.testing.assert_array_equal(np.concatenate(indices),
                                    one.train_batches.microbatch_indices(update, k))
      # The same (seed, update, example) gives the same augmented image.
      np.testing.assert_array_equal(
          np.concatenate([p["image"] for p in parts]), whole["image"])
  again = pipelines(name, tmp_path, 1)[0].train_batches(1)
  np.testing.assert_array_equal(again["image"], one.train_batches(1)["image"])
  other_seed = pipelines(name, tmp_path, 1, seed=6)[0]
  same_examples = other_seed.train_batches
  same_examples.permutation = one.train_batches.permutation  # only the seed of the crops
  assert not np.array_equal(same_examples(1)["image"], one.train_batches(1)["image"])


@pytest.mark.parametrize("name", ["cifar10", "imagenet2012"])
def test_evaluation_counts_every_example_once_across_processes(name, mock_tfds, tmp_path):
  counted = 0
  for pipe in pipelines(name, tmp_path, 2):
    for batch in pipe.eval_batches():
      assert batch["image"].shape[1:] == (16, 16, 3)
      counted += int(batch["mask"].sum())
  assert counted == 96
