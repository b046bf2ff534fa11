"""The datasets lbt knows: where TFDS keeps them and what their examples are.

Sizes are declared here so that a config can be validated (a batch larger than
the training set, say) before anything is read from disk.
"""

import dataclasses
import os
from typing import Callable, Optional, Tuple

from lbt.registry import Registry


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """One image-classification dataset as TFDS stores it."""
  tfds_name: str
  train_split: str
  eval_split: str
  num_train_examples: int
  num_eval_examples: int
  num_classes: int
  image_shape: Tuple[int, int, int]
  # Per-channel mean and std of pixel values scaled to [0, 1].
  mean: Tuple[float, ...]
  std: Tuple[float, ...]
  # Builds the TFDS dataset in a data dir when TFDS cannot (offline builders).
  prepare: Optional[Callable[[str], None]] = None


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register(name: str, spec: DatasetSpec) -> DatasetSpec:
  return DATASETS.register(name)(spec)


def default_data_dir() -> str:
  """$LBT_DATA_DIR, else TFDS's own default."""
  return os.environ.get("LBT_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _prepare_fashion_mnist(data_dir: str) -> None:
  from lbt.data import fashion_mnist
  fashion_mnist.prepare(data_dir)


register("fashion_mnist", DatasetSpec(
    tfds_name="lbt_fashion_mnist", train_split="train", eval_split="test",
    num_train_examples=60_000, num_eval_examples=10_000, num_classes=10,
    image_shape=(28, 28, 1), mean=(0.2860,), std=(0.3530,),
    prepare=_prepare_fashion_mnist))
