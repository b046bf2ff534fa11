"""The input pipeline: real Fashion-MNIST, deterministic batches, exact eval."""

import json
import os

import numpy as np
import pytest

from lbt.engine import batch_schedule
from lbt.engine import config as config_lib
from lbt.data import DATASETS, Pipeline, fashion_mnist


def make_pipeline(data_dir, process_index=0, process_count=1, **kw):
  """A pipeline given the sizes a run's facts would give it (a microbatch of
  the whole batch unless set; the updates per epoch of the pool)."""
  args = dict(data_dir=data_dir, cache=True, seed=3, batch_size=512,
              eval_batch_size=3000)
  args.update(kw)
  args.setdefault("microbatch_size", args["batch_size"])
  args.setdefault("steps_per_epoch", config_lib.updates_per_epoch(
      60000 - args.get("validation_examples", 0), args["batch_size"]))
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
  assert len(pipeline.train_batches.source) == pipeline.spec.num_train_examples == 60000


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


def test_stream_state_resumes_at_the_same_update(pipeline):
  def stream():
    return pipeline.train_stream(batch_schedule.constant_plan(
        512, len(pipeline.train_batches.pool), 50))

  it = stream()
  for _ in range(7):
    it.next_update()
    next(it)
  state = it.get_state()
  assert it.next_update().update == 7
  expected = next(it)
  again = stream()
  again.set_state(state)
  assert again.next_update().update == 7
  np.testing.assert_array_equal(next(again)["image"], expected["image"])


def test_stream_resumes_from_a_checkpoint_of_lbt_before_batch_schedules(pipeline):
  """grain's own iterator state, the index of the next microbatch, still
  restores a constant batch; the digest-checked state stays what was saved."""
  stream = pipeline.train_stream(batch_schedule.constant_plan(
      512, len(pipeline.train_batches.pool), 50))
  legacy = {"next_index": 7}  # one microbatch per update: update 7 is next
  stream.set_state(json.dumps(legacy).encode())
  assert stream.get_state() == legacy
  slot = stream.next_update()
  assert (slot.update, slot.epoch, slot.offset) == (7, 0, 7 * 512)
  np.testing.assert_array_equal(next(stream)["label"], pipeline.train_batches(7)["label"])
  assert json.loads(stream.get_state())["update"] == 8


def test_batches_are_normalized(pipeline):
  batch = pipeline.train_batches(0)
  assert batch["image"].shape == (512, 28, 28, 1) and batch["image"].dtype == np.float32
  assert abs(batch["image"].mean()) < 0.1 and abs(batch["image"].std() - 1) < 0.1


def test_microbatches_are_strided_and_each_process_reads_a_contiguous_part(data_dir):
  """Microbatch k of an update = examples k, k+n, ... of its batch, whatever the
  process count; the stream yields microbatch after microbatch."""
  whole = make_pipeline(data_dir, batch_size=512).train_batches.indices(3)
  for count in (1, 2):
    parts = [make_pipeline(data_dir, p, count, batch_size=512, microbatch_size=128)
             for p in range(count)]
    for k in range(4):
      got = np.concatenate([p.train_batches.microbatch_indices(3, k) for p in parts])
      np.testing.assert_array_equal(got, whole[k::4])
  pipe = make_pipeline(data_dir, batch_size=512, microbatch_size=128)
  it = pipe.train_stream(batch_schedule.constant_plan(512, 60000, 10))
  first = []
  for _ in range(2):
    assert it.num_microbatches(it.next_update()) == 4
    first += [next(it) for _ in range(4)]
  assert [len(m["label"]) for m in first] == [128] * 8
  fresh = pipe.train_stream(batch_schedule.constant_plan(512, 60000, 10))
  assert it.get_state() != fresh.get_state()
  # The fifth microbatch is microbatch 0 of update 1.
  np.testing.assert_array_equal(
      first[4]["label"], pipe.train_batches.source.read(
          pipe.train_batches.microbatch_indices(1, 0))["label"])


def test_validation_split_is_fixed_held_out_and_counted_once(data_dir):
  a = make_pipeline(data_dir, validation_examples=10000, seed=1, batch_size=5000)
  b = make_pipeline(data_dir, validation_examples=10000, seed=2, batch_size=5000)
  np.testing.assert_array_equal(a.validation_indices, b.validation_indices)
  assert len(np.unique(a.validation_indices)) == 10000
  assert a.steps_per_epoch == 50000 // 5000
  trained = np.concatenate([a.train_batches.indices(s) for s in range(a.steps_per_epoch)])
  assert len(np.unique(trained)) == 50000
  assert not np.intersect1d(trained, a.validation_indices).size
  counted = sum(int(batch["mask"].sum()) for batch in a.validation_batches())
  assert counted == 10000


def test_a_damaged_decoded_cache_is_rebuilt(data_dir, tmp_path):
  import shutil
  from lbt.data import sources as sources_lib
  spec = DATASETS.get("fashion_mnist")
  local = tmp_path / "data"
  shutil.copytree(os.path.join(data_dir, spec.tfds_name), local / spec.tfds_name)
  source = sources_lib._load_source(spec, str(local), "test", True)
  cache = local / "lbt_decoded" / spec.tfds_name / "1.0.0" / "test.npz"
  assert cache.exists()
  cache.write_bytes(cache.read_bytes()[:1000])
  sources_lib._load_source.cache_clear()
  again = sources_lib._load_source(spec, str(local), "test", True)
  np.testing.assert_array_equal(again.labels, source.labels)


def test_a_batch_that_does_not_divide_is_padded_and_masked(data_dir):
  """1,001 examples in 3 microbatches on 8 devices, read by 2 processes: every
  example of the update once, padding masked."""
  whole = make_pipeline(data_dir, batch_size=1001).train_batches.indices(2)
  pipes = [make_pipeline(data_dir, p, 2, batch_size=1001, microbatch_size=336,
                         num_devices=8) for p in range(2)]
  assert pipes[0].num_microbatches == 3 and pipes[0].train_batches.padded_microbatch == 336
  seen = []
  for k in range(3):
    places = np.concatenate([p.train_batches.microbatch_indices(2, k) for p in pipes])
    assert len(places) == 336
    np.testing.assert_array_equal(places[places >= 0], whole[k::3])
    seen.append(places[places >= 0])
  assert sorted(np.concatenate(seen)) == sorted(whole)
  element = pipes[1].train_batches(2 * 3 + 2)  # update 2, microbatch 2, process 1
  assert element["image"].shape[0] == 168
  np.testing.assert_array_equal(element["mask"],
                                pipes[1].train_batches.microbatch_indices(2, 2) >= 0)


def test_a_read_only_data_dir_without_the_cache_still_reads(data_dir, tmp_path):
  """The decoded copy cannot be written: decode in memory, say so, go on."""
  import shutil
  from lbt.data import sources as sources_lib
  spec = DATASETS.get("fashion_mnist")
  local = tmp_path / "data"
  shutil.copytree(os.path.join(data_dir, spec.tfds_name), local / spec.tfds_name)
  (local / "lbt_decoded").write_text("a file where the cache directory would go")
  sources_lib._load_source.cache_clear()
  source = sources_lib._load_source(spec, str(local), "test", True)
  assert len(source) == 10000


@pytest.mark.parametrize("cache", [False, True])
def test_a_damaged_shard_is_named_before_training(data_dir, tmp_path, cache):
  """Even when a decoded copy exists, a truncated array_record file is named."""
  import shutil
  from lbt.data import sources as sources_lib
  from lbt.errors import ConfigError
  spec = DATASETS.get("fashion_mnist")
  local = tmp_path / "data"
  shutil.copytree(os.path.join(data_dir, spec.tfds_name), local / spec.tfds_name)
  sources_lib._load_source.cache_clear()
  sources_lib._load_source(spec, str(local), "test", True)  # the decoded copy
  shard = next((local / spec.tfds_name / "1.0.0").glob("*test.array_record*"))
  shard.write_bytes(shard.read_bytes()[:len(shard.read_bytes()) // 2])
  sources_lib._load_source.cache_clear()
  with pytest.raises(ConfigError, match=shard.name):
    sources_lib._load_source(spec, str(local), "test", cache)
