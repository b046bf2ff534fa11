"""One input pipeline for every dataset: a TFDS data source read through grain.

Update i of a run always sees the same global batch, whatever the number of
processes and devices: the epoch's permutation is a function of (seed, epoch),
the global batch is a contiguous slice of it, and each process reads only its
own contiguous part of that slice. So the data position is just the index of
the next update, which is what grain's iterator state records and what a resumed
run restores.

Each element of the grain dataset is a whole process-local batch: reading the
records of a batch in one `__getitems__` call and normalizing them with numpy
costs far less than a per-example Python pipeline at batch sizes of 10^4-10^6.
Each epoch drops its last `num_train % batch_size` examples (a different set
every epoch); at the full batch there is exactly one update per epoch.
"""

import functools
import math
import os
from typing import Dict, Iterator, Sequence

import grain
import numpy as np
import tensorflow_datasets as tfds

from lbt.data.catalog import DatasetSpec, default_data_dir
from lbt.errors import ConfigError

Batch = Dict[str, np.ndarray]
# Reading and decoding happen in grain's threads while the device computes.
READ_THREADS = 2
PREFETCH_BATCHES = 2


class ArraySource:
  """A split decoded once into memory, read by index like a TFDS data source."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images, self.labels = images, labels

  def __len__(self) -> int:
    return len(self.labels)

  def read(self, indices: np.ndarray) -> Batch:
    return {"image": self.images[indices], "label": self.labels[indices]}


class RecordSource:
  """A TFDS array_record split, decoded batch by batch as it is read."""

  def __init__(self, source):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def read(self, indices: np.ndarray) -> Batch:
    records = self.source.__getitems__([int(i) for i in indices])
    return {"image": np.stack([r["image"] for r in records]),
            "label": np.asarray([r["label"] for r in records], np.int32)}


def load_source(spec: DatasetSpec, data_dir: str, split: str, cache: bool):
  """Opens one split, preparing offline-built datasets on first use."""
  return _load_source(spec, data_dir or default_data_dir(), split, cache)


@functools.lru_cache(maxsize=8)
def _load_source(spec: DatasetSpec, data_dir: str, split: str, cache: bool):
  """Decoding is done once per process: a study runs many points on one split."""
  try:
    if not data_dir.startswith("gs://"):
      os.makedirs(data_dir, exist_ok=True)
    if spec.prepare is not None:
      spec.prepare(data_dir)
    source = tfds.data_source(spec.tfds_name, split=split, data_dir=data_dir,
                              download=spec.prepare is None)
  except Exception as e:  # TFDS raises many types; the user needs one message.
    raise ConfigError("dataset.data_dir", data_dir,
                      f"a TFDS data dir holding {spec.tfds_name} as array_record "
                      f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
  records = RecordSource(source)
  if not cache:
    return records
  return _decoded_copy(records, os.path.join(data_dir, "lbt_decoded", spec.tfds_name,
                                             f"{split}.npz"))


def _decoded_copy(records: RecordSource, path: str) -> ArraySource:
  """The split decoded into memory, kept as .npz beside the TFDS files.

  Decoding a record costs ~50 us in TFDS's Python parser; for a small data set
  read many times (every point of a study, every resumed run) it is done once.
  """
  if os.path.exists(path):
    with np.load(path) as stored:
      if len(stored["label"]) == len(records):
        return ArraySource(stored["image"], stored["label"])
  decoded = [records.read(np.arange(start, min(start + 8192, len(records))))
             for start in range(0, len(records), 8192)]
  images = np.concatenate([d["image"] for d in decoded])
  labels = np.concatenate([d["label"] for d in decoded]).astype(np.int32)
  if not path.startswith("gs://"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, image=images, label=labels)
    os.replace(tmp, path)
  return ArraySource(images, labels)


def normalize(images: np.ndarray, spec: DatasetSpec) -> np.ndarray:
  mean = np.asarray(spec.mean, np.float32) * 255.0
  std = np.asarray(spec.std, np.float32) * 255.0
  return (images.astype(np.float32) - mean) / std


class TrainBatches:
  """Maps an update index to this process's part of that update's global batch."""

  def __init__(self, source, spec: DatasetSpec, seed: int, batch_size: int,
               process_index: int, process_count: int):
    self.source, self.spec, self.seed = source, spec, seed
    self.batch_size = batch_size
    self.steps_per_epoch = len(source) // batch_size
    self.local_batch = batch_size // process_count
    self.offset = process_index * self.local_batch

  @functools.lru_cache(maxsize=2)
  def permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(len(self.source))

  def indices(self, step: int) -> np.ndarray:
    epoch, position = divmod(step, self.steps_per_epoch)
    start = position * self.batch_size + self.offset
    return self.permutation(epoch)[start:start + self.local_batch]

  def __call__(self, step: int) -> Batch:
    batch = self.source.read(self.indices(int(step)))
    return {"image": normalize(batch["image"], self.spec), "label": batch["label"]}


class Pipeline:
  """Train and eval batches of one dataset, as seen by one process."""

  def __init__(self, spec: DatasetSpec, *, data_dir: str, cache: bool, seed: int,
               batch_size: int, eval_batch_size: int, process_index: int = 0,
               process_count: int = 1):
    self.spec = spec
    self.eval_batch_size = eval_batch_size
    self.process_index, self.process_count = process_index, process_count
    train = load_source(spec, data_dir, spec.train_split, cache)
    self.eval_source = load_source(spec, data_dir, spec.eval_split, cache)
    self.train_batches = TrainBatches(train, spec, seed, batch_size,
                                      process_index, process_count)
    self.num_train_examples = len(train)
    self.num_eval_examples = len(self.eval_source)
    self.steps_per_epoch = self.train_batches.steps_per_epoch

  def train_iterator(self, num_steps: int) -> grain.DatasetIterator:
    """Batches of updates 0..num_steps-1; its state is the next update index."""
    dataset = grain.MapDataset.range(num_steps).map(self.train_batches)
    options = grain.ReadOptions(num_threads=READ_THREADS,
                                prefetch_buffer_size=PREFETCH_BATCHES)
    return iter(dataset.to_iter_dataset(options))

  @property
  def num_eval_batches(self) -> int:
    return math.ceil(self.num_eval_examples / self.eval_batch_size)

  def eval_positions(self, batch_index: int):
    """This process's example indices of one eval batch and their mask."""
    local = self.eval_batch_size // self.process_count
    start = batch_index * self.eval_batch_size + self.process_index * local
    positions = np.arange(start, start + local)
    mask = positions < self.num_eval_examples
    return np.where(mask, positions, 0), mask

  def eval_batches(self) -> Iterator[Batch]:
    """Every eval example exactly once; the last batch is padded and masked."""
    for b in range(self.num_eval_batches):
      indices, mask = self.eval_positions(b)
      batch = self.eval_source.read(indices)
      yield {"image": normalize(batch["image"], self.spec),
             "label": batch["label"].astype(np.int32),
             "mask": mask.astype(np.float32)}


def prepare(config) -> None:
  """Builds an offline dataset in the data dir if it is not there yet."""
  from lbt.data.catalog import DATASETS
  spec = DATASETS.get(config.dataset.name, "dataset.name")
  for split in (spec.train_split, spec.eval_split):
    load_source(spec, config.dataset.data_dir, split, cache=False)


def create_pipeline(config, process_index: int = 0, process_count: int = 1) -> Pipeline:
  from lbt.data.catalog import DATASETS
  return Pipeline(DATASETS.get(config.dataset.name, "dataset.name"),
                  data_dir=config.dataset.data_dir, cache=config.dataset.cache,
                  seed=config.seed, batch_size=config.batch_size,
                  eval_batch_size=config.eval_batch_size,
                  process_index=process_index, process_count=process_count)
