"""A dataset held on the devices, each batch gathered there: the input of data
sets that fit in device memory (Fashion-MNIST's 70,000 images are 55 MB).

The host still chooses every batch with the pipeline's own code (the epoch's
permutation, the microbatch's members and padding: `TrainBatches.examples`;
the eval batches: `Pipeline.eval_reads`) and hands the devices only those
indices. One small program gathers the examples from the split, which every
device holds as uint8, and normalizes them through a table of
`pipeline.normalize` applied to each of the 256 pixel values, so that a batch
is the pipeline's to the bit on any backend and the training and evaluation
programs that take it are the pipeline path's own. What this saves is the
host's work per batch: reading, normalizing and copying it to the devices.

`LBT_INPUT` chooses the input of a run: `auto` (the default: this one where
`unavailable` finds nothing against it, else the host pipeline), `device` or
`pipeline`. A run's results do not depend on it.
"""

import functools
import os
from typing import Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lbt.data import pipeline as pipeline_lib
from lbt.data import sources as sources_lib
from lbt.errors import ConfigError

CHOICES = ("auto", "device", "pipeline")
# At most this many bytes of images and labels (both splits) go to each device.
MAX_BYTES = 1 << 30


def choice() -> str:
  """LBT_INPUT's value (default 'auto'); ConfigError for any other."""
  value = os.environ.get("LBT_INPUT", "auto")
  if value not in CHOICES:
    raise ConfigError("LBT_INPUT", value, f"one of {', '.join(CHOICES)}")
  return value


def unavailable(pipeline: pipeline_lib.Pipeline) -> Optional[str]:
  """Why `pipeline`'s splits cannot be held on the devices; None: they can."""
  spec = pipeline.spec
  sources = (pipeline.train_batches.source, pipeline.eval_source)
  if pipeline.process_count > 1:
    return "the run has several processes"
  if spec.train_transform is not None or spec.eval_transform is not None:
    return f"{spec.tfds_name} is augmented per example"
  if not all(isinstance(s, sources_lib.ArraySource) and s.images.dtype == np.uint8
             and s.labels.dtype == np.int32 for s in sources):
    return "its splits are not decoded into memory as uint8 (dataset.cache)"
  size = sum(s.images.nbytes + s.labels.nbytes for s in sources)
  if size > MAX_BYTES:
    return f"its splits take {size} bytes, over {MAX_BYTES}"
  return None


def normalization_table(spec) -> np.ndarray:
  """(256, C): `pipeline.normalize` of every pixel value in every channel."""
  channels = len(spec.mean)
  values = np.repeat(np.arange(256, dtype=np.uint8)[:, None], channels, axis=1)
  return pipeline_lib.normalize(values, spec)


def gather(split, table, indices):
  """The examples `indices` of a split on the devices, normalized by `table`."""
  images = split["image"][indices]
  channels = jnp.arange(table.shape[1])
  return {"image": table[images.astype(jnp.int32), channels],
          "label": split["label"][indices]}


@functools.lru_cache(maxsize=8)
def _on_devices(source: sources_lib.ArraySource, replicated):
  """A split copied to every device once per process: a study's runs on one
  mesh share it."""
  return jax.device_put({"image": source.images, "label": source.labels}, replicated)


@functools.lru_cache(maxsize=8)
def _gatherer(spec, replicated, sharded):
  """(the jitted `gather` for these shardings, `spec`'s table on the devices)."""
  return (jax.jit(gather, in_shardings=(replicated, replicated, sharded), out_shardings=sharded),
          jax.device_put(normalization_table(spec), replicated))


def _batch(source, spec, replicated, sharded, indices: np.ndarray, mask: Optional[np.ndarray]):
  """The batch of `indices` of `source`'s split (with `mask` where given), gathered on
  the devices and split over them."""
  program, table = _gatherer(spec, replicated, sharded)
  out = program(_on_devices(source, replicated), table, indices)
  if mask is not None:
    out["mask"] = jax.device_put(mask, sharded)
  return out


@functools.lru_cache(maxsize=4)
def _held_batches(source, spec, replicated, sharded, examples: bytes, masks: bytes, shape):
  """The batches of `examples` (int64, a row a batch) with `masks` (float32),
  gathered once per process and kept on the devices."""
  rows = np.frombuffer(examples, np.int64).reshape(shape)
  weights = np.frombuffer(masks, np.float32).reshape(shape)
  return tuple(_batch(source, spec, replicated, sharded, r, w) for r, w in zip(rows, weights))


class DeviceData:
  """A pipeline's splits on every device of a mesh, each batch gathered there.

  `replicated` and `sharded` are the mesh's shardings of a whole array and
  of a batch (split along its leading axis); batches come out sharded.
  """

  def __init__(self, pipeline: pipeline_lib.Pipeline, replicated, sharded):
    self.pipeline, self.replicated, self.sharded = pipeline, replicated, sharded
    self.train = _on_devices(pipeline.train_batches.source, replicated)
    self.table = _gatherer(pipeline.spec, replicated, sharded)[1]

  def train_stream(self, plan) -> "DeviceStream":  # an engine BatchPlan
    return DeviceStream(self, plan)

  def microbatches(self, stream: "DeviceStream", count: int) -> Iterator:
    """The next `count` microbatches of `stream`, gathered as they are taken."""
    return (next(stream) for _ in range(count))

  def train_batch(self, indices: np.ndarray, mask: Optional[np.ndarray]):
    return _batch(self.pipeline.train_batches.source, self.pipeline.spec, self.replicated,
                  self.sharded, indices, mask)

  def eval_batches(self) -> Iterator:
    return self._held(self.pipeline.eval_source, self.pipeline.eval_indices)

  def validation_batches(self) -> Iterator:
    return self._held(self.pipeline.train_batches.source, self.pipeline.validation_indices)

  def _held(self, source, indices: np.ndarray) -> Iterator:
    """The eval batches over `indices` of a split, gathered once per process
    and kept on the devices: each evaluation of each run reads them again."""
    reads = list(self.pipeline.eval_reads(indices))
    if not reads:
      return iter(())
    examples, masks = (np.stack(parts) for parts in zip(*reads))
    return iter(_held_batches(source, self.pipeline.spec, self.replicated, self.sharded,
                              examples.astype(np.int64).tobytes(), masks.tobytes(),
                              examples.shape))


class DeviceStream(pipeline_lib.TrainStream):
  """The training microbatches as a batch plan lays them out, gathered on the
  devices; its state (the plan's) is the pipeline stream's."""

  def __init__(self, data: DeviceData, plan):
    super().__init__(data.pipeline.train_batches, plan)
    self.data, self._slot, self._microbatch = data, None, 0

  def next_update(self):
    """The next update's slot; takes it."""
    if self.plan.finished():
      raise RuntimeError(f"the batch plan has no update {self.plan.update}: it is finished")
    self._slot, self._microbatch, self._legacy = self.plan.take(), 0, None
    return self._slot

  def __next__(self):
    indices, mask = self.batches.examples(self._slot, self._microbatch)
    self._microbatch += 1
    return self.data.train_batch(indices, mask)
