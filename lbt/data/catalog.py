"""The datasets lbt knows: where TFDS keeps them and what their examples are.

Sizes are declared here so that a config can be validated (a batch larger than
the training set, say) before anything is read from disk. A dataset with
augmentation names its per-example transforms (`lbt.data.augment`) here, so
the pipeline applies them without knowing which dataset it reads.
"""

import dataclasses
import os
from typing import Callable, Optional, Tuple

from lbt.data import augment
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
  # Per-example transforms of one decoded uint8 HWC record to a uint8
  # size x size x C image: train_transform(image, rng, size) with the
  # generator of augment.example_rng(seed, update, index), and
  # eval_transform(image, size). None: records are used as stored.
  train_transform: Optional[Callable] = None
  eval_transform: Optional[Callable] = None
  # Set for a synthetic stand-in: records of this HWC shape are generated in
  # process (pixels seeded by the example's index) instead of read from TFDS.
  synthetic_shape: Optional[Tuple[int, int, int]] = None


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


# TFDS's own builders. Reading them (tfds.data_source, images decoded with
# OpenCV or PIL) needs no TensorFlow; building the array_record files does
# (their builders read with tf.io.gfile): run once where TensorFlow is
# installed, `tfds build cifar10 --file_format=array_record --data_dir=DIR`
# (ImageNet: `tfds build imagenet2012 --manual_dir=<the two ILSVRC tars>`),
# with DIR local or gs://, and point dataset.data_dir or $LBT_DATA_DIR at it.

# Per-channel statistics of the 50,000 training images, pixels in [0, 1].
register("cifar10", DatasetSpec(
    tfds_name="cifar10", train_split="train", eval_split="test",
    num_train_examples=50_000, num_eval_examples=10_000, num_classes=10,
    image_shape=(32, 32, 3), mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    train_transform=augment.cifar_train, eval_transform=augment.cifar_eval))

# ImageNet-1k (ILSVRC 2012). TFDS needs the manual download of the two tars
# (see README); image_shape is the model's input after the crop. Mean and std
# are the usual RGB statistics of the training set (torchvision, MLPerf).
register("imagenet2012", DatasetSpec(
    tfds_name="imagenet2012", train_split="train", eval_split="validation",
    num_train_examples=1_281_167, num_eval_examples=50_000, num_classes=1000,
    image_shape=(224, 224, 3), mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    train_transform=augment.imagenet_train, eval_transform=augment.imagenet_eval))

# The same sizes and transforms as imagenet2012 with generated 48x48 records:
# smoke runs of the paper's largest points (819,200, the full 1,281,167) on any
# machine, e.g. with --config.dataset.image_size=16 on CPU.
register("imagenet2012_synthetic", dataclasses.replace(
    DATASETS.get("imagenet2012"), tfds_name="", synthetic_shape=(48, 48, 3)))
