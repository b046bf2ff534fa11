"""Augmentation: determinism, crop statistics, exact flips and hand-computed crops."""

import copy

import numpy as np
import pytest

from lbt.data import augment
from lbt.data.catalog import DATASETS


def _image(height, width, channels=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (height, width, channels), np.uint8)


@pytest.mark.parametrize("name", ["imagenet2012", "cifar10"])
def test_train_transform_deterministic_per_seed_update_index(name):
  spec = DATASETS.get(name)
  image = _image(64, 48) if name == "imagenet2012" else _image(32, 32)
  size = 24
  run = lambda *key: spec.train_transform(image, augment.example_rng(*key), size)
  first = run(0, 5, 3)
  assert first.shape == (size, size, 3) and first.dtype == np.uint8
  np.testing.assert_array_equal(first, run(0, 5, 3))
  # Another seed, update or example position gives another augmentation.
  for key in ((1, 5, 3), (0, 6, 3), (0, 5, 4)):
    assert not np.array_equal(first, run(*key)), key


def test_batch_split_across_processes_equals_one_process():
  """Any split of update 7's batch (processes, strided microbatches) augments
  each example as the whole batch read at once does."""
  spec = DATASETS.get("imagenet2012")
  indices = np.array([11, 5, 902, 3, 77, 40])  # training-split indices
  images = {i: _image(40 + i % 7, 30 + i % 5, seed=int(i)) for i in indices}
  batch = lambda idx, update=7: augment.train_batch(
      [images[i] for i in idx], idx, spec.train_transform, 16, seed=3, update=update)
  whole = batch(indices)
  assert whole.shape == (6, 16, 16, 3) and whole.dtype == np.uint8
  np.testing.assert_array_equal(np.concatenate([batch(indices[:3]), batch(indices[3:])]),
                                whole)
  strided = np.concatenate([batch(indices[0::2]), batch(indices[1::2])])
  np.testing.assert_array_equal(strided, whole[[0, 2, 4, 1, 3, 5]])
  np.testing.assert_array_equal(batch(indices), whole)  # a resumed run: same batch
  assert not np.array_equal(batch(indices, update=8), whole)
  evaluated = augment.eval_batch([images[i] for i in indices], spec.eval_transform, 16)
  assert evaluated.shape == (6, 16, 16, 3) and evaluated.dtype == np.uint8


def test_crop_box_statistics():
  """Area fraction in [0.08, 1], aspect in [3/4, 4/3], box inside the image."""
  height, width = 375, 500
  rng = np.random.default_rng(0)
  fractions, aspects = [], []
  for _ in range(2000):
    top, left, h, w = augment.random_resized_crop_box(rng, height, width)
    assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
    fractions.append(h * w / (height * width))
    aspects.append(w / h)
  fractions, aspects = np.array(fractions), np.array(aspects)
  # Rounding the sides to integers moves the area by at most ~1/side.
  assert fractions.min() >= 0.08 - 0.01 and fractions.max() <= 1.0
  assert aspects.min() >= 0.75 - 0.01 and aspects.max() <= 4 / 3 + 0.01
  # The draws span the ranges: both small and near-full crops, both aspects.
  assert fractions.min() < 0.1 and fractions.max() > 0.7
  assert aspects.min() < 0.8 and aspects.max() > 1.25


def test_crop_box_draws_are_uniform_when_every_box_fits():
  """On a square image with area fraction <= 0.5 every first draw fits
  (side <= sqrt(0.5 * 4/3) < 1), so the accepted boxes show the raw
  distributions: area ~ U(0.08, 0.5), log-aspect ~ U(log 3/4, log 4/3)."""
  rng = np.random.default_rng(1)
  boxes = np.array([augment.random_resized_crop_box(rng, 1000, 1000, scale=(0.08, 0.5))
                    for _ in range(4000)], np.float64)
  fractions = boxes[:, 2] * boxes[:, 3] / 1e6
  log_aspects = np.log(boxes[:, 3] / boxes[:, 2])
  half = np.log(4 / 3)
  assert abs(fractions.mean() - 0.29) < 0.01
  assert abs(fractions.std() - 0.42 / np.sqrt(12)) < 0.01
  assert abs(log_aspects.mean()) < 0.01
  assert abs(log_aspects.std() - 2 * half / np.sqrt(12)) < 0.01


def test_crop_box_falls_back_to_center():
  """An extreme panorama admits no crop of aspect <= 4/3 with area >= 8% of it:
  the fallback is the centered full-height box of aspect exactly 4/3."""
  rng = np.random.default_rng(0)
  top, left, h, w = augment.random_resized_crop_box(rng, 10, 1000)
  assert (top, h) == (0, 10) and w == round(10 * 4 / 3)
  assert left == (1000 - w) // 2


def test_flip_is_an_exact_mirror():
  image = _image(40, 30)
  seen = set()
  for seed in range(16):
    rng = np.random.default_rng(seed)
    probe = copy.deepcopy(rng)
    top, left, h, w = augment.random_resized_crop_box(probe, 40, 30)
    crop = augment.resize(image[top:top + h, left:left + w], 16, 16)
    flipped = probe.random() < 0.5
    out = augment.imagenet_train(image, rng, 16)
    np.testing.assert_array_equal(out, crop[:, ::-1] if flipped else crop)
    seen.add(flipped)
  assert seen == {True, False}
  # random_flip alone: the image, or column j taken from column W-1-j.
  flips = 0
  for seed in range(8):
    out = augment.random_flip(image, np.random.default_rng(seed))
    if not np.array_equal(out, image):
      flips += 1
      for j in range(30):
        np.testing.assert_array_equal(out[:, j], image[:, 29 - j])
  assert 0 < flips < 8


def test_imagenet_eval_is_the_hand_computed_center_crop():
  # size 7: the shorter side is resized to 7 * 256 / 224 = 8, which an 8 x 12
  # image already has, so the result is a pure crop: rows round(0.5) = 0..6,
  # columns round(2.5) = 2..8 (Python rounds halves to even).
  image = np.arange(8 * 12 * 3, dtype=np.uint8).reshape(8, 12, 3)
  out = augment.imagenet_eval(image, 7)
  np.testing.assert_array_equal(out, image[0:7, 2:9])
  # Portrait: 14 x 8 -> rows round(3.5) = 4..10, columns round(0.5) = 0..6.
  image = _image(14, 8)
  np.testing.assert_array_equal(augment.imagenet_eval(image, 7), image[4:11, 0:7])


def test_imagenet_eval_resizes_the_shorter_side():
  # 48 x 96 -> shorter side 256 (longer 512), then the central 224 x 224.
  image = np.full((48, 96, 3), 77, np.uint8)
  out = augment.imagenet_eval(image, 224)
  assert out.shape == (224, 224, 3) and out.dtype == np.uint8
  assert (out == 77).all()  # bilinear resizing keeps a constant image constant


def test_cifar_train_is_a_window_of_the_zero_padded_image():
  image = _image(32, 32, seed=1)
  padded = np.zeros((40, 40, 3), np.uint8)
  padded[4:36, 4:36] = image
  windows = {(t, l): padded[t:t + 32, l:l + 32] for t in range(9) for l in range(9)}
  offsets = set()
  for seed in range(40):
    rng = np.random.default_rng(seed)
    probe = copy.deepcopy(rng)
    top, left = int(probe.integers(0, 9)), int(probe.integers(0, 9))
    window = windows[top, left]
    expected = window[:, ::-1] if probe.random() < 0.5 else window
    np.testing.assert_array_equal(augment.cifar_train(image, rng, 32), expected)
    offsets.add((top, left))
  assert len(offsets) > 20  # many of the 81 offsets are used
  np.testing.assert_array_equal(augment.cifar_eval(image, 32), image)


def test_transforms_read_mock_tfds_records():
  """The records tfds.data_source decodes (uint8 HWC of any size) go through."""
  tfds = pytest.importorskip("tensorflow_datasets")
  for name, size in (("imagenet2012", 32), ("cifar10", 32)):
    spec = DATASETS.get(name)
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=3):
      train = tfds.data_source(spec.tfds_name, split=spec.train_split)
      evaluation = tfds.data_source(spec.tfds_name, split=spec.eval_split)
      records = [train[0], train[1], evaluation[0]]
    for i, record in enumerate(records):
      image = record["image"]
      assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
      out = (spec.train_transform(image, augment.example_rng(0, 0, i), size) if i < 2
             else spec.eval_transform(image, size))
      assert out.shape == (size, size, 3) and out.dtype == np.uint8
