"""Per-example image transforms: ImageNet crops, CIFAR pad-and-crop, flips.

Each transform maps one decoded uint8 HWC image (what `tfds.data_source`
returns: TFDS decodes the stored JPEG/PNG with OpenCV when it is installed and
with PIL otherwise, so no TensorFlow is needed) to a uint8 `size x size x C`
image. The result stays uint8 so that a batch crosses process and host
boundaries at a quarter of the float32 size; the pipeline normalizes the
stacked batch by the dataset's mean and std (`lbt.data.pipeline.normalize`).

Random transforms draw every decision from the `np.random.Generator` they are
given, in a fixed order, and from nothing else. `train_batch` builds that
generator with `example_rng(seed, update, index)` from the example's index in
the training split, so the augmentation of an example at update t depends on
which example it is, not on where it sits in the batch, in which microbatch or
which process reads it: a resumed run, or any split of the batch over
processes and microbatches, sees exactly the batch of an uninterrupted
single-process run. The pipeline calls `train_batch` / `eval_batch` on the
records it read (in grain's reader threads).

Transforms are looked up from the `DatasetSpec` (`train_transform`,
`eval_transform`); `size` is the side of the model's input, the dataset's
native size unless `config.dataset.image_size` shrinks it (small CPU tests).
"""

import math
from typing import Callable, Sequence, Tuple

import numpy as np
from PIL import Image

# Separates the augmentation stream from the epoch-shuffle stream, which the
# pipeline seeds with (seed, epoch).
AUGMENT_STREAM = 0x6175676d  # "augm"

Box = Tuple[int, int, int, int]  # top, left, height, width


def example_rng(seed: int, update: int, index: int) -> np.random.Generator:
  """The generator of one example's augmentation at one update.

  `index` is the example's index in the training split: an example occurs at
  most once in a batch, so (seed, update, index) names one augmentation.
  """
  return np.random.default_rng((AUGMENT_STREAM, int(seed), int(update), int(index)))


def train_batch(images: Sequence[np.ndarray], indices: Sequence[int], transform: Callable,
                size: int, *, seed: int, update: int) -> np.ndarray:
  """Training images of one update, augmented and stacked (uint8).

  `images[i]` is the decoded record of training example `indices[i]`. Any
  part of the update's batch (a process's share of a microbatch) gives the
  same images for its examples as the whole batch read at once.
  """
  return np.stack([transform(image, example_rng(seed, update, index), size)
                   for image, index in zip(images, indices)])


def eval_batch(images: Sequence[np.ndarray], transform: Callable, size: int) -> np.ndarray:
  """Evaluation images, transformed and stacked (uint8)."""
  return np.stack([transform(image, size) for image in images])


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear resize of a uint8 HWC image (PIL, antialiased when shrinking).

  PIL's bilinear filter widens its support when it shrinks an image, which is
  what torchvision's `Resize`/`RandomResizedCrop` do on PIL images.
  """
  if image.shape[:2] == (height, width):
    return image
  channels = image.shape[2]
  pil = Image.fromarray(np.ascontiguousarray(image[:, :, 0] if channels == 1 else image))
  out = np.asarray(pil.resize((width, height), Image.BILINEAR))
  return out.reshape(height, width, channels)


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int,
                            scale: Tuple[float, float] = (0.08, 1.0),
                            ratio: Tuple[float, float] = (3 / 4, 4 / 3),
                            attempts: int = 10) -> Box:
  """The Inception crop: a box of random area fraction and aspect ratio.

  Up to `attempts` times, draw an area fraction uniformly in `scale` and an
  aspect ratio (width / height) log-uniformly in `ratio`; keep the first box
  that fits in the image, at a uniformly random position. If none fits, fall
  back to the largest centered box whose aspect is clipped to `ratio`.

  References:
    Szegedy et al., "Going Deeper with Convolutions", 2015, §6 (crops of 8% to
    100% of the image, aspect 3/4 to 4/3); the procedure (10 attempts, center
    fallback) as in torchvision's `RandomResizedCrop.get_params` and TF's
    `sample_distorted_bounding_box` use in the TPU ResNet preprocessing.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(attempts):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Mirrors left-right with probability 1/2 (one draw from `rng`)."""
  return image[:, ::-1] if rng.random() < 0.5 else image


def imagenet_train(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
  """Inception crop resized to size x size, then a random horizontal flip.

  References:
    Szegedy et al. 2015 (crop); Goyal et al. 2017 and the MLPerf ResNet-50
    reference use exactly this training augmentation.
  """
  top, left, h, w = random_resized_crop_box(rng, image.shape[0], image.shape[1])
  crop = resize(image[top:top + h, left:left + w], size, size)
  return np.ascontiguousarray(random_flip(crop, rng))


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """The centered size x size window (offsets rounded as torchvision does)."""
  height, width = image.shape[:2]
  top = int(round((height - size) / 2.0))
  left = int(round((width - size) / 2.0))
  return image[top:top + size, left:left + size]


def imagenet_eval(image: np.ndarray, size: int) -> np.ndarray:
  """Shorter side resized to size * 256/224, then the central size x size crop.

  At size 224 this is the standard "resize 256, center crop 224" evaluation.
  The longer side keeps the aspect ratio, truncated as torchvision's Resize.

  References:
    He et al., "Deep Residual Learning for Image Recognition", 2016, §3.4;
    Goyal et al. 2017.
  """
  height, width = image.shape[:2]
  short = int(round(size * 256 / 224))
  if height <= width:
    new_h, new_w = short, int(short * width / height)
  else:
    new_h, new_w = int(short * height / width), short
  return np.ascontiguousarray(center_crop(resize(image, new_h, new_w), size))


def cifar_train(image: np.ndarray, rng: np.random.Generator, size: int,
                pad: int = 4) -> np.ndarray:
  """Zero-pad 4 pixels per side, take a random 32 x 32 window, random flip.

  Padding is with zeros (black pixels) on the uint8 image, before
  normalization, as TF's official CIFAR ResNet preprocessing
  (`resize_image_with_crop_or_pad` to 40 x 40, then `random_crop`) and
  torchvision's `RandomCrop(32, padding=4)` do. The window is then resized to
  `size` when a test asks for a smaller input.

  References:
    He et al. 2016, §4.2: "4 pixels are padded on each side, and a 32x32 crop
    is randomly sampled from the padded image or its horizontal flip".
  """
  height, width = image.shape[:2]
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  top = int(rng.integers(0, 2 * pad + 1))
  left = int(rng.integers(0, 2 * pad + 1))
  crop = random_flip(padded[top:top + height, left:left + width], rng)
  return np.ascontiguousarray(resize(crop, size, size))


def cifar_eval(image: np.ndarray, size: int) -> np.ndarray:
  """The image itself (resized when a test asks for a smaller input)."""
  return resize(image, size, size)
