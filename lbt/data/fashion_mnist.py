"""Fashion-MNIST as a TFDS dataset that is built offline, without TensorFlow.

TFDS's own `fashion_mnist` builder downloads the four IDX files and parses them
with `tf.io.gfile`, so it needs TensorFlow and the internet. This builder reads
the same four files from Debian's `dataset-fashion-mnist` package (or downloads
them from the original URL when that package is absent), and writes array_record
shards that `tfds.data_source` reads like any other TFDS dataset. Images are
stored as raw uint8 tensors: PNG encoding would again need TensorFlow.
"""

import contextlib
import fcntl
import gzip
import os

import numpy as np
import tensorflow_datasets as tfds

from lbt.io import layout

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
               "Shirt", "Sneaker", "Bag", "Ankle boot")


def read_idx(path: str) -> np.ndarray:
  """Parses a gzipped IDX file (the MNIST format) into a uint8 array."""
  with gzip.open(path, "rb") as f:
    data = f.read()
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def has_source_files(source_dir: str) -> bool:
  return all(os.path.exists(os.path.join(source_dir, name))
             for pair in FILES.values() for name in pair)


class LbtFashionMnist(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST (Xiao et al. 2017): 60,000 train and 10,000 test 28x28 images."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = []
  source_dir = DEBIAN_DIR

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description="Fashion-MNIST from its IDX files, images as uint8 tensors.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    )

  def _split_generators(self, dl_manager):
    if has_source_files(self.source_dir):
      paths = {split: [os.path.join(self.source_dir, n) for n in names]
               for split, names in FILES.items()}
    else:
      paths = dl_manager.download(
          {split: [URL + n for n in names] for split, names in FILES.items()})
    return {split: self._generate_examples(*[os.fspath(p) for p in pair])
            for split, pair in paths.items()}

  def _generate_examples(self, images_path, labels_path):
    images, labels = read_idx(images_path), read_idx(labels_path)
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image[:, :, None], "label": int(label)}


def prepare(data_dir: str, source_dir: str = DEBIAN_DIR) -> None:
  """Writes the dataset into `data_dir` once; later calls return at once.

  Two processes that build it at once (two test workers, two studies on a new
  machine) would both write and the second rename would fail: a local data
  dir is built under an exclusive lock, and the builder is made inside it, so
  the second process finds the first one's dataset.
  """
  with _exclusive(data_dir):
    builder = LbtFashionMnist(data_dir=data_dir, file_format="array_record")
    builder.source_dir = source_dir
    builder.download_and_prepare()


@contextlib.contextmanager
def _exclusive(data_dir: str):
  if "://" in data_dir:  # An object store has no lock; TFDS's own rename decides.
    yield
    return
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, layout.FASHION_MNIST_LOCK), "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    yield
