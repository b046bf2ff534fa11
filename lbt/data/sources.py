"""Where a dataset's examples come from: a TFDS data source (its records
read as they are, or decoded once into memory and kept as .npz beside the
TFDS files), or synthetic examples; each `read(indices)` returns a batch of
images and labels as numpy arrays. `lbt.data.pipeline` reads batches of them.
"""

import functools
import logging
import os
import zipfile
from typing import Dict

import numpy as np
import tensorflow_datasets as tfds

from lbt import errors
from lbt.data.catalog import DatasetSpec, default_data_dir
from lbt.errors import ConfigError
from lbt.io import files

Batch = Dict[str, np.ndarray]


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
    images = [r["image"] for r in records]
    if len({i.shape for i in images}) == 1:  # ImageNet's vary: kept as a list
      images = np.stack(images)
    return {"image": images,
            "label": np.asarray([r["label"] for r in records], np.int32)}


class SyntheticSource:
  """Generated records of a fixed shape: uint8 pixels seeded by (split, index),
  label index % num_classes. Reads like an array of the split's length."""

  def __init__(self, length: int, shape, num_classes: int, salt: int):
    self.length, self.shape = length, tuple(shape)
    self.num_classes, self.salt = num_classes, salt

  def __len__(self) -> int:
    return self.length

  def read(self, indices: np.ndarray) -> Batch:
    images = np.stack([np.random.default_rng([self.salt, int(i)]).integers(
        0, 256, self.shape, dtype=np.uint8) for i in indices])
    return {"image": images,
            "label": (np.asarray(indices) % self.num_classes).astype(np.int32)}


def load_source(spec: DatasetSpec, data_dir: str, split: str, cache: bool):
  """Opens one split, preparing offline-built datasets on first use."""
  if spec.synthetic_shape is not None:
    train = split == spec.train_split
    return SyntheticSource(spec.num_train_examples if train else spec.num_eval_examples,
                           spec.synthetic_shape, spec.num_classes, salt=int(train))
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
  check_shards(source, split, data_dir)
  records = RecordSource(source)
  if not cache:
    return records
  version = str(source.dataset_info.version)
  return _decoded_copy(records, os.path.join(
      data_dir, "lbt_decoded", spec.tfds_name, version, f"{split}.npz"))


def check_shards(source, split: str, data_dir: str) -> None:
  """Reads the first and last record of every shard, before any training.

  A truncated or damaged array_record file otherwise surfaces mid-run (or
  never, while a decoded copy exists); here it is named with its path.
  """
  splits = source.dataset_info.splits
  if split not in splits:  # Generated records (tfds.testing.mock_data): no files.
    return
  start = 0
  for path, length in zip(splits[split].filepaths, splits[split].shard_lengths):
    try:
      source.__getitems__([start, start + length - 1])
    except Exception as e:  # Riegeli/array_record raise their own types.
      raise ConfigError("dataset.data_dir", data_dir, f"TFDS files that read; {path} is "
                        f"damaged ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                        "delete that dataset's directory to rebuild it") from None
    start += length


def _decoded_copy(records: RecordSource, path: str) -> ArraySource:
  """The split decoded into memory, kept as .npz beside the TFDS files.

  Decoding a record costs ~50 us in TFDS's Python parser; for a small data set
  read many times (every point of a study, every resumed run) it is done once.
  The file is keyed by the TFDS dataset's version and split, so a changed
  dataset is never read stale; a file that does not read back whole is rebuilt.
  """
  if os.path.exists(path):
    try:
      with np.load(path) as stored:
        if len(stored["label"]) == len(records):
          return ArraySource(stored["image"], stored["label"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
      pass  # Damaged (e.g. a copy cut short): decode again below.
  decoded = [records.read(np.arange(start, min(start + 8192, len(records))))
             for start in range(0, len(records), 8192)]
  images = np.concatenate([d["image"] for d in decoded])
  labels = np.concatenate([d["label"] for d in decoded]).astype(np.int32)
  if path.startswith("gs://"):
    return ArraySource(images, labels)
  try:  # A read-only data dir still trains, decoding on every start.
    with files.writing(path, "the decoded cache"):
      os.makedirs(os.path.dirname(path), exist_ok=True)
      tmp = f"{path}.{os.getpid()}.tmp.npz"
      np.savez(tmp, image=images, label=labels)
      os.replace(tmp, path)
  except errors.WriteError as e:
    logging.warning("Decoded copy not kept: %s", e)
  return ArraySource(images, labels)


def prepare(spec: DatasetSpec, data_dir: str) -> None:
  """Builds an offline dataset in the data dir if it is not there yet."""
  for split in (spec.train_split, spec.eval_split):
    load_source(spec, data_dir, split, cache=False)
