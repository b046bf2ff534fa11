"""One input pipeline for every dataset: a TFDS data source read through grain.

Update i of a run always sees the same global batch, whatever the number of
processes and devices: the epoch's permutation is a function of (seed, epoch),
the global batch is a contiguous slice of it, and each process reads only its
own part of it. The stream yields one microbatch at a time (this process's part
of it), so that host and device memory are set by the microbatch, never by the
batch. The batch of each update and where its examples start come from a
`batch_schedule.BatchPlan`, whose state is the data position a checkpoint
records and a resumed run restores (checkpoints are taken between updates).

Each element of the grain dataset is a whole process-local microbatch: reading
its records in one `__getitems__` call and normalizing them with numpy costs far
less than a per-example Python pipeline at 10^3-10^5 examples per microbatch.
Each epoch drops its last `num_train % batch_size` examples (a different set
every epoch); at the full batch there is exactly one update per epoch.
"""

import collections
import functools
import json
import math
from typing import Dict, Iterator, Optional, Tuple

import grain
import numpy as np

from lbt.data import slots
from lbt.data import augment
from lbt.data.catalog import DatasetSpec
from lbt.data.sources import load_source

Batch = Dict[str, np.ndarray]
# Reading and decoding happen in grain's threads while the device computes.
READ_THREADS = 2
PREFETCH_MICROBATCHES = 2
# Updates laid out per grain dataset (fewer when the batch changes sooner).
SEGMENT_UPDATES = 4096
# Fixed for every run and seed: the validation split must not move between points.
VALIDATION_SEED = 20200615


def normalize(images: np.ndarray, spec: DatasetSpec) -> np.ndarray:
  mean = np.asarray(spec.mean, np.float32) * 255.0
  std = np.asarray(spec.std, np.float32) * 255.0
  return (images.astype(np.float32) - mean) / std


def split_validation(num_examples: int, validation_examples: int):
  """(training pool, validation indices) of a training split.

  The validation examples are the last `validation_examples` of one fixed
  permutation (the same for every seed, so that every point of a study is
  tuned on the same held-out examples). Without validation the pool is the
  split in its own order.
  """
  if not validation_examples:
    return np.arange(num_examples), np.arange(0)
  order = np.random.default_rng(VALIDATION_SEED).permutation(num_examples)
  cut = num_examples - validation_examples
  return order[:cut], np.sort(order[cut:])


class TrainBatches:
  """Maps (update, microbatch) to this process's part of that microbatch.

  The global batch of an update is a contiguous slice of the epoch's
  permutation of the training pool (where it starts: `slots.Slot`).
  Microbatch k of it holds examples k, k + n, k + 2n, ... (n microbatches), so
  every microbatch is a uniform sample of the batch; each process reads a
  contiguous part of it, so that a microbatch is the same set in the same order
  for any number of processes and devices. A batch that does not divide into
  equal microbatches of a multiple of the device count is padded
  (`slots.microbatch_layout`); the padded places carry a 'mask' of 0, which
  the step gives no loss and BatchNorm no weight.

  Called with an element e of a constant batch's stream, it returns microbatch
  e % n of update e // n.
  """

  def __init__(self, source, pool: np.ndarray, spec: DatasetSpec, seed: int,
               batch_size: int, microbatch_size: int, steps_per_epoch: int,
               process_index: int, process_count: int, image_size: int = 0,
               num_devices: int = 1, split: bool = False, shuffle: bool = True):
    self.source, self.pool, self.spec, self.seed = source, pool, spec, seed
    self.split, self.shuffle = split, shuffle
    self.image_size = image_size or spec.image_shape[0]
    self.batch_size, self.microbatch_size = batch_size, microbatch_size
    self.num_devices, self.process_count = num_devices, process_count
    self.process_index = process_index
    self.num_microbatches, self.padded_microbatch, self.padded = self.layout(batch_size)
    self.steps_per_epoch = steps_per_epoch

  def layout(self, batch: int):
    """(microbatches, padded microbatch, whether padded) of a batch."""
    n, size = slots.microbatch_layout(batch, self.microbatch_size, self.num_devices,
                                           self.split)
    return n, size, n * size > batch

  @functools.lru_cache(maxsize=2)
  def permutation(self, epoch: int) -> np.ndarray:
    """The pool in epoch `epoch`'s order: a permutation seeded by (seed,
    epoch), or the pool's own order in every epoch without `shuffle`."""
    if not self.shuffle:
      return self.pool
    order = np.random.default_rng([self.seed, epoch]).permutation(len(self.pool))
    return self.pool[order]

  def slot(self, update: int) -> slots.Slot:
    """Where update `update` of the constant batch starts."""
    epoch, position = divmod(update, self.steps_per_epoch)
    return slots.Slot(update, self.batch_size, epoch,
                               position * self.batch_size, 0.0)

  def places(self, slot: slots.Slot, microbatch: int) -> np.ndarray:
    """This process's examples of one microbatch; -1 marks a padded place."""
    n, size, _ = self.layout(slot.batch)
    start, stop = slot.offset + microbatch, slot.offset + slot.batch
    members = self.permutation(slot.epoch)[start:stop:n]
    places = np.full(size, -1, members.dtype)
    places[:len(members)] = members
    local = size // self.process_count
    return places[self.process_index * local:(self.process_index + 1) * local]

  def microbatch_indices(self, update: int, microbatch: int) -> np.ndarray:
    return self.places(self.slot(update), microbatch)

  def indices(self, update: int) -> np.ndarray:
    """This process's examples of an update, microbatch after microbatch."""
    parts = np.concatenate([self.microbatch_indices(update, k)
                            for k in range(self.num_microbatches)])
    return parts[parts >= 0]

  def examples(self, slot: slots.Slot, microbatch: int) -> Tuple[np.ndarray,
                                                                  Optional[np.ndarray]]:
    """(the examples this process reads for one microbatch, their mask): a
    padded place reads any real example and has mask 0; no mask when the
    batch is not padded."""
    places = self.places(slot, microbatch)
    real = places >= 0
    indices = np.where(real, places, self.pool[0])
    return indices, real.astype(np.float32) if self.layout(slot.batch)[2] else None

  def read(self, slot: slots.Slot, microbatch: int) -> Batch:
    """This process's part of one microbatch, decoded and augmented."""
    indices, mask = self.examples(slot, microbatch)
    batch = self.source.read(indices)
    images = batch["image"]
    if self.spec.train_transform is not None:
      images = augment.train_batch(images, indices, self.spec.train_transform,
                                   self.image_size, seed=self.seed, update=slot.update)
    out = {"image": normalize(images, self.spec), "label": batch["label"]}
    if mask is not None:
      out["mask"] = mask
    return out

  def __call__(self, element: int) -> Batch:
    update, microbatch = divmod(int(element), self.num_microbatches)
    return self.read(self.slot(update), microbatch)


class TrainStream:
  """This process's training microbatches, update after update, as a batch plan
  lays them out.

  `next_update()` takes the next update's slot from the plan; iterating then
  yields that update's microbatches. They are read by grain's threads one
  segment ahead, a segment being the updates the plan has decided so far
  that keep the same batch (the whole run for a constant batch). The state
  is the plan's (JSON bytes, what `grain.checkpoint` saves for an iterator
  that is not grain's own); a checkpoint is always between updates.
  """

  def __init__(self, batches: TrainBatches, plan):  # an engine BatchPlan
    self.batches, self.plan = batches, plan
    self._segment, self._iterator = collections.deque(), None
    self._legacy = None

  def next_update(self) -> slots.Slot:
    """The next update's slot (its batch, epoch and offset); takes it."""
    if not self._segment:
      slots = self.plan.upcoming(limit=SEGMENT_UPDATES)
      if not slots:
        raise RuntimeError(f"the batch plan has no update {self.plan.update}: it is finished")
      self._segment.extend(slots)
      n = self.batches.layout(slots[0].batch)[0]
      dataset = grain.MapDataset.range(len(slots) * n).map(
          lambda e: self.batches.read(slots[e // n], e % n))
      options = grain.ReadOptions(num_threads=READ_THREADS,
                                  prefetch_buffer_size=PREFETCH_MICROBATCHES)
      self._iterator = iter(dataset.to_iter_dataset(options))
    slot = self.plan.take()
    self._legacy = None
    if slot != self._segment.popleft():
      raise RuntimeError(f"the batch plan moved under its data stream at update {slot.update}")
    return slot

  def num_microbatches(self, slot: slots.Slot) -> int:
    return self.batches.layout(slot.batch)[0]

  def __iter__(self):
    return self

  def __next__(self) -> Batch:
    return next(self._iterator)

  def get_state(self):
    if self._legacy is not None:  # Restored, not moved: what the checkpoint holds.
      return self._legacy
    return json.dumps(self.plan.state(), sort_keys=True).encode()

  def set_state(self, state: bytes) -> None:
    state = json.loads(state)
    if "next_index" in state and self.plan.name == "constant":
      # A checkpoint of lbt before batch schedules: grain's index of the next
      # microbatch of a constant batch.
      update = state["next_index"] // self.batches.layout(self.plan.batch)[0]
      slot = self.batches.slot(update)
      self.plan.update, self.plan.epoch, self.plan.offset = update, slot.epoch, slot.offset
      self._legacy = state
    else:
      self.plan.set_state(state)
    self._segment, self._iterator = collections.deque(), None

  def start_prefetch(self) -> None:
    """Part of the interface grain's checkpoint handler expects; reading
    starts with the first update."""


class Pipeline:
  """Train, validation and eval batches of one dataset, as seen by one process.

  The sizes are the run's as validation derived them (lbt.engine.config's
  RunFacts): `microbatch_size` is the microbatch the run accumulates (the
  batch itself when it does not), `steps_per_epoch` the updates of
  `batch_size` in one epoch of the pool; the pipeline derives neither.
  """

  def __init__(self, spec: DatasetSpec, *, data_dir: str, cache: bool, seed: int,
               batch_size: int, eval_batch_size: int, microbatch_size: int,
               steps_per_epoch: int,
               validation_examples: int = 0, process_index: int = 0,
               process_count: int = 1, image_size: int = 0, num_devices: int = 1,
               noise_scale_split: bool = False, shuffle: bool = True):
    self.spec = spec
    self.image_size = image_size or spec.image_shape[0]
    self.eval_batch_size = eval_batch_size
    self.process_index, self.process_count = process_index, process_count
    train = load_source(spec, data_dir, spec.train_split, cache)
    self.eval_source = load_source(spec, data_dir, spec.eval_split, cache)
    pool, self.validation_indices = split_validation(len(train), validation_examples)
    self.train_batches = TrainBatches(
        train, pool, spec, seed, batch_size, microbatch_size, steps_per_epoch,
        process_index, process_count, image_size, num_devices, noise_scale_split,
        shuffle)
    self.steps_per_epoch = self.train_batches.steps_per_epoch
    self.num_microbatches = self.train_batches.num_microbatches

  def train_stream(self, plan) -> TrainStream:  # an engine BatchPlan
    """The training microbatches as `plan` lays them out, from its position."""
    return TrainStream(self.train_batches, plan)

  @property
  def num_eval_examples(self) -> int:
    return len(self.eval_source)

  @property
  def num_eval_batches(self) -> int:
    return math.ceil(self.num_eval_examples / self.eval_batch_size)

  def eval_positions(self, batch_index: int, total: int = None):
    """This process's positions (of `total`, default the eval split) in one
    eval batch, and their mask."""
    total = self.num_eval_examples if total is None else total
    local = self.eval_batch_size // self.process_count
    start = batch_index * self.eval_batch_size + self.process_index * local
    positions = np.arange(start, start + local)
    mask = positions < total
    return np.where(mask, positions, 0), mask

  def eval_reads(self, indices: np.ndarray) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """(the examples this process reads, their mask) of each eval batch over
    `indices`: every example exactly once, the last batch padded and masked."""
    for b in range(math.ceil(len(indices) / self.eval_batch_size)):
      positions, mask = self.eval_positions(b, len(indices))
      yield indices[positions], mask.astype(np.float32)

  def _batches(self, source, indices: np.ndarray) -> Iterator[Batch]:
    for examples, mask in self.eval_reads(indices):
      batch = source.read(examples)
      images = batch["image"]
      if self.spec.eval_transform is not None:
        images = augment.eval_batch(images, self.spec.eval_transform, self.image_size)
      yield {"image": normalize(images, self.spec),
             "label": batch["label"].astype(np.int32), "mask": mask}

  def eval_batches(self) -> Iterator[Batch]:
    return self._batches(self.eval_source, self.eval_indices)

  def validation_batches(self) -> Iterator[Batch]:
    """The held-out part of the training split (empty without validation)."""
    return self._batches(self.train_batches.source, self.validation_indices)

  @property
  def eval_indices(self) -> np.ndarray:
    return np.arange(self.num_eval_examples)
