"""The input pipeline: real Fashion-MNIST, deterministic batches, exact eval."""

import numpy as np
import pytest

from lbt.data import DATASETS, Pipeline, fashion_mnist


def make_pipeline(data_dir, process_index=0, process_count=1, **kw):
  args = dict(data_dir=data_dir, cache=True, seed=3, batch_size=512,
              eval_batch_size=3000)
  args.update(kw)
  return Pipeline(DATASETS.get("fashion_mnist"), process_index=process_index,
                  process_count=process_count, **args)


@pytest.fixture(scope="module")
def pipeline(data_dir):
  return make_pipeline(data_dir)


def test_tfds_dataset_equals_the_idx_files(pipeline):
  """The TFDS array_record copy holds exactly the Debian IDX files' examples."""
  images = fashion_mnist.read_idx(
      f"{fashion_mnist.DEBIAN_DIR}/t10k-images-idx3-ubyte.gz")
  labels = fashion_mnist.read_idx(
      f"{fashion_mnist.DEBIAN_DIR}/t10k-labels-idx1-ubyte.gz")
  assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
  # TFDS stores records in its own shuffled order: compare as multisets.
  def fingerprints(images, labels):
    return sorted(img.tobytes() + bytes([lab]) for img, lab in zip(images, labels))
  src = pipeline.eval_source
  assert fingerprints(src.images[..., 0], src.labels) == fingerprints(images, labels)
  assert pipeline.num_train_examples == 60000


def test_records_read_uncached_equal_cached(data_dir, pipeline):
  uncached = make_pipeline(data_dir, cache=False)
  idx = np.array([0, 17, 59999, 4242])
  a, b = pipeline.train_batches.source.read(idx), uncached.train_batches.source.read(idx)
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["label"], b["label"])


def test_each_epoch_is_a_fresh_permutation_without_repeats(pipeline):
  batches = pipeline.train_batches
  spe = batches.steps_per_epoch
  assert spe == 60000 // 512
  epoch0 = np.concatenate([batches.indices(s) for s in range(spe)])
  epoch1 = np.concatenate([batches.indices(s) for s in range(spe, 2 * spe)])
  assert len(np.unique(epoch0)) == len(epoch0) == spe * 512
  assert not np.array_equal(epoch0, epoch1)


def test_processes_read_disjoint_parts_of_the_same_global_batch(data_dir, pipeline):
  """Update 5's global batch is the same, however many processes read it."""
  parts = [make_pipeline(data_dir, p, 4).train_batches.indices(5) for p in range(4)]
  np.testing.assert_array_equal(np.concatenate(parts), pipeline.train_batches.indices(5))


def test_full_batch_has_one_update_per_epoch(data_dir):
  full = make_pipeline(data_dir, batch_size=60000)
  assert full.steps_per_epoch == 1
  np.testing.assert_array_equal(np.sort(full.train_batches.indices(0)), np.arange(60000))


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_sees_every_example_exactly_once(data_dir, process_count):
  seen = []
  for p in range(process_count):
    pipe = make_pipeline(data_dir, p, process_count, eval_batch_size=3000)
    assert pipe.num_eval_batches == 4  # 3000 * 4 >= 10000: the last is padded.
    for b in range(pipe.num_eval_batches):
      idx, mask = pipe.eval_positions(b)
      seen.append(idx[mask])
  seen = np.concatenate(seen)
  np.testing.assert_array_equal(np.sort(seen), np.arange(10000))


def test_iterator_state_resumes_at_the_same_update(pipeline):
  it = pipeline.train_iterator(50)
  for _ in range(7):
    next(it)
  state = it.get_state()
  expected = next(it)
  again = pipeline.train_iterator(50)
  again.set_state(state)
  np.testing.assert_array_equal(next(again)["image"], expected["image"])


def test_batches_are_normalized(pipeline):
  batch = pipeline.train_batches(0)
  assert batch["image"].shape == (512, 28, 28, 1) and batch["image"].dtype == np.float32
  assert abs(batch["image"].mean()) < 0.1 and abs(batch["image"].std() - 1) < 0.1
