"""Batch-size schedules: the batch of each update and where its examples start.

A run's batch may change while it trains (`batch_schedule` in the config):

  constant     `batch_size` for every update (the default; a config may
               leave the section out).
  steps        Smith et al. 2018, "Don't decay the learning rate, increase the
               batch size" (arXiv 1711.00489): `batch_sizes[j]` from epoch
               `epochs[j]` on, `batch_size` before the first.
  noise_scale  the batch follows the gradient noise scale measured by the run
               itself (McCandlish et al. 2018, arXiv 1812.06162; the batch-size
               warmup of Merrill et al. 2025, arXiv 2505.23971): it starts at
               `batch_size` and every `every` updates becomes `factor` x
               B_simple, rounded to a multiple of the microbatch and clipped to
               [min_batch, max_batch], once MIN_ESTIMATES updates have been
               measured (a single estimate can be far off).

The microbatch stays fixed and the number of microbatches changes, so memory
stays that of one microbatch whatever the batch; the update is compiled once
per distinct batch.

Examples: each epoch is a permutation of the training pool. An update takes
the next B examples of the current epoch, or starts the next epoch when fewer
than B are left (those are dropped, as a constant batch drops N mod B). The
plan's state (the next update, its epoch and offset, the batch history and the
noise-scale averages) is saved with every checkpoint, so a resumed run takes
the same batches of the same examples as an uninterrupted one.

A run whose batch changes follows its learning-rate schedule in epochs (the
schedule of `batch_size`, evaluated at the epochs trained before each update)
with the peak LR of `batch_size`: Smith et al. keep the LR and grow the batch.
A run of `steps` or `noise_scale` lasts `num_epochs` (`num_train_steps` must
be 0), so schedules compare at equal examples.
"""

import bisect
import copy
import dataclasses
import math
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from lbt.data.slots import Slot
from lbt.stats import noise_scale
from lbt.errors import ConfigError

KINDS = ("constant", "steps", "noise_scale")
# What a config without a batch_schedule section means.
DEFAULT = {"name": "constant"}
FIELDS = {"constant": ("name",), "steps": ("name", "epochs", "batch_sizes"),
          "noise_scale": ("name", "factor", "min_batch", "max_batch", "every")}
# noise_scale fields a config may leave out; 0 means batch_size / the largest
# multiple of the microbatch in the training pool.
NOISE_DEFAULTS = {"factor": 1.0, "min_batch": 0, "max_batch": 0, "every": 50}
# Estimates a noise_scale batch waits for: the time constant of the moving
# averages (noise_scale.NOISE_SCALE_DECAY).
MIN_ESTIMATES = round(1 / (1 - noise_scale.NOISE_SCALE_DECAY))


def section(config) -> Dict[str, Any]:
  """The config's batch_schedule as a plain dict, defaults filled in."""
  given = config.get("batch_schedule")
  out = dict(DEFAULT if given is None else given)
  if out.get("name") == "noise_scale":
    out = {**NOISE_DEFAULTS, **out}
  return out


def _fail(field: str, value, allowed: str):
  raise ConfigError(f"batch_schedule.{field}", value, allowed)


def _positive_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check(config, *, train_examples: int, microbatch: int, split: bool) -> None:
  """Validates `batch_schedule` against the run; the section's one owner.

  Args:
    config: the run config.
    train_examples: the training pool (after the validation hold-out).
    microbatch: config.microbatch_size as given (0: no accumulation).
    split: whether a one-microbatch batch is split in two for the noise scale.

  Raises:
    ConfigError naming the field and what is allowed.
  """
  given = config.get("batch_schedule")
  if given is None:
    return
  if not hasattr(given, "keys"):
    raise ConfigError("batch_schedule", given, "a section (ConfigDict)")
  spec = section(config)
  name = spec.get("name")
  if name not in KINDS:
    _fail("name", name, f"one of {', '.join(KINDS)}")
  for key in given.keys():
    if key not in FIELDS[name]:
      _fail(key, given[key], f"not a field of the {name} schedule; it has: "
            f"{', '.join(FIELDS[name])}")
  if name == "constant":
    return
  if microbatch < 1:
    raise ConfigError("microbatch_size", microbatch,
                      f"a positive microbatch with batch_schedule.name={name!r}: the "
                      "microbatch stays fixed while the number of microbatches changes")
  if config.num_train_steps != 0:
    raise ConfigError("num_train_steps", config.num_train_steps,
                      f"0 with batch_schedule.name={name!r}: a run whose batch changes "
                      "lasts num_epochs, so that schedules compare at equal examples")
  limit = f"an integer in [1, {train_examples}] (the training pool)"
  if name == "steps":
    epochs, sizes = spec.get("epochs"), spec.get("batch_sizes")
    if (not isinstance(epochs, (list, tuple)) or not epochs or
        any(isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e)
            or e <= 0 or e >= config.num_epochs for e in epochs)
        or list(epochs) != sorted(set(epochs))):
      _fail("epochs", epochs, "a non-empty list of increasing epochs, each in (0, "
            f"num_epochs={config.num_epochs:g}), at which the batch changes")
    if not isinstance(sizes, (list, tuple)) or len(sizes) != len(epochs):
      _fail("batch_sizes", sizes, f"a list of {len(epochs)} batch sizes, one from each "
            "of batch_schedule.epochs on")
    for size in sizes:
      if not _positive_int(size) or size > train_examples:
        _fail("batch_sizes", sizes, f"batch sizes, each {limit}")
    return
  factor = spec["factor"]
  if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not (
      math.isfinite(factor) and factor > 0):
    _fail("factor", factor, "a positive number (the batch is factor x B_simple)")
  for key in ("min_batch", "max_batch"):
    value = spec[key]
    if not (value == 0 and not isinstance(value, bool)) and not (
        _positive_int(value) and value <= train_examples and value % microbatch == 0):
      _fail(key, value, f"0 ({'batch_size' if key == 'min_batch' else 'the training pool'})"
            f" or a multiple of the microbatch ({microbatch}) in [1, {train_examples}]")
  low, high = limits(spec, config.batch_size, microbatch, train_examples)
  if high < low:
    _fail("max_batch", spec["max_batch"], f"at least min_batch ({low})")
  if not low <= config.batch_size <= high:
    _fail("max_batch" if config.batch_size > high else "min_batch",
          spec["max_batch" if config.batch_size > high else "min_batch"],
          f"bounds around batch_size ({config.batch_size}), where the run starts")
  if not _positive_int(spec["every"]):
    _fail("every", spec["every"], "a positive number of updates between batch changes")
  if microbatch > low // 2 and not split:
    raise ConfigError("microbatch_size", microbatch,
                      f"at most min_batch / 2 ({low // 2}) with a noise_scale schedule, "
                      "which needs >= 2 microbatch gradients at every batch (or set "
                      "noise_scale_split=True)")


def limits(schedule: Mapping[str, Any], batch_size: int, microbatch: int,
           train_examples: int):
  """(min_batch, max_batch) of a noise_scale schedule (`section`), zeros
  resolved: batch_size, and the largest multiple of the microbatch in the pool."""
  largest = max(microbatch, train_examples // microbatch * microbatch)
  return schedule.get("min_batch") or batch_size, schedule.get("max_batch") or largest


@dataclasses.dataclass
class BatchPlan:
  """Decides the batch of each update; its state is JSON, saved in checkpoints.

  Attributes:
    schedule: `section(config)`.
    pool_size: examples in the training pool (one epoch).
    microbatch: the global microbatch (what a noise_scale batch rounds to).
    num_epochs: how long a changing-batch run lasts.
    num_updates: > 0: the run's exact length in updates (constant batches,
      or num_train_steps); 0: until num_epochs.
    min_batch, max_batch: noise_scale's bounds.
    update, epoch, offset: the position of the next update.
    history: [first update, batch] of each batch taken, in order.
    noise: EMA of |G|^2, EMA of tr(Σ) and estimates seen
      (`noise_scale.smoothed_noise_scale`).
  """
  schedule: Dict[str, Any]
  pool_size: int
  microbatch: int
  num_epochs: float
  num_updates: int
  min_batch: int
  max_batch: int
  update: int = 0
  epoch: int = 0
  offset: int = 0
  history: List[List[int]] = dataclasses.field(default_factory=list)
  noise: List[float] = dataclasses.field(default_factory=lambda: [0.0, 0.0, 0])

  @property
  def batch(self) -> int:
    """The batch of the last update (the first one's before any)."""
    return self.history[-1][1]

  @property
  def name(self) -> str:
    return self.schedule["name"]

  def b_simple(self) -> float:
    """B_simple from the averages, NaN before MIN_ESTIMATES or while the
    average |G|² is not positive."""
    ema_g, ema_t, count = self.noise
    return ema_t / ema_g if count >= MIN_ESTIMATES and ema_g > 0 else float("nan")

  def _decide(self, epoch: int, offset: int) -> int:
    """The batch of the next update if it started at (epoch, offset)."""
    name = self.name
    if name == "steps":
      done = epoch + offset / self.pool_size
      j = bisect.bisect_right(self.schedule["epochs"], done + 1e-12)
      return self.history[0][1] if j == 0 else int(self.schedule["batch_sizes"][j - 1])
    if name == "noise_scale" and self.is_decision_point():
      b = self.b_simple()
      if math.isfinite(b) and b > 0:
        m = self.microbatch
        wanted = max(m, int(round(self.schedule["factor"] * b / m)) * m)
        return int(min(self.max_batch, max(self.min_batch, wanted)))
    return self.batch

  def is_decision_point(self) -> bool:
    """Whether the next update may change a noise_scale batch (then the loop
    must have folded every earlier update's estimate in first)."""
    return (self.name == "noise_scale" and self.update > 0
            and self.update % self.schedule["every"] == 0)

  def peek(self) -> Slot:
    """The next update's slot, without taking it."""
    epoch, offset = self.epoch, self.offset
    batch = self._decide(epoch, offset)
    if offset + batch > self.pool_size:  # Too few left: the next epoch.
      epoch, offset = epoch + 1, 0
      batch = self._decide(epoch, offset)
    return Slot(self.update, batch, epoch, offset, epoch + offset / self.pool_size)

  def finished(self) -> bool:
    if self.num_updates:
      return self.update >= self.num_updates
    return self.peek().epochs_done >= self.num_epochs - 1e-9

  def take(self) -> Slot:
    """The next update's slot; the position moves past it."""
    slot = self.peek()
    if slot.batch != self.batch:
      self.history.append([slot.update, slot.batch])
    self.update, self.epoch, self.offset = slot.update + 1, slot.epoch, slot.offset + slot.batch
    return slot

  def upcoming(self, limit: int) -> List[Slot]:
    """The next updates that keep the next update's batch (at most `limit`),
    as far as they are decided now: up to a change, the run's end or the
    next noise_scale decision."""
    plan, slots = copy.deepcopy(self), []
    while len(slots) < limit and not plan.finished():
      if slots and plan.is_decision_point():
        break
      slot = plan.peek()
      if slots and slot.batch != slots[0].batch:
        break
      slots.append(plan.take())
    return slots

  def schedule_position(self, slot: Slot, steps_per_epoch: int) -> float:
    """Where update `slot` is on the run's learning-rate schedule, in updates
    of the first batch: the update count for a constant batch; for a changing
    one, the epochs trained times the first batch's updates per epoch (the
    schedule follows epochs, not updates)."""
    if self.name == "constant":
      return float(slot.update)
    return slot.epochs_done * steps_per_epoch

  def add_noise_estimates(self, grad_sq_norm, trace_sigma) -> np.ndarray:
    """Folds per-update estimates into the averages; B_simple after each."""
    b_simple, state = noise_scale.smoothed_noise_scale(
        grad_sq_norm, trace_sigma, tuple(self.noise))
    self.noise = [float(state[0]), float(state[1]), int(state[2])]
    return b_simple

  def examples(self) -> int:
    """Examples the updates taken so far trained on."""
    ends = [first for first, _ in self.history[1:]] + [self.update]
    return sum(batch * (end - first) for (first, batch), end in zip(self.history, ends))

  def state(self) -> Dict[str, Any]:
    """The checkpoint's data position: the next update, its epoch and offset,
    the examples trained on, the batch history and the noise averages."""
    return {"update": self.update, "epoch": self.epoch, "offset": self.offset,
            "examples": self.examples(), "history": [list(h) for h in self.history],
            "noise": list(self.noise), "schedule": self.name}

  def set_state(self, state: Mapping[str, Any]) -> None:
    if state.get("schedule") != self.name:
      raise ValueError(f"the checkpoint's batch schedule is {state.get('schedule')!r}, "
                       f"this config's is {self.name!r}")
    self.update, self.epoch, self.offset = state["update"], state["epoch"], state["offset"]
    self.history = [list(h) for h in state["history"]]
    self.noise = list(state["noise"])


def constant_plan(batch_size: int, pool_size: int, num_updates: int) -> BatchPlan:
  """`num_updates` updates of `batch_size`."""
  return BatchPlan(dict(DEFAULT), pool_size, batch_size, 0.0, num_updates,
                   batch_size, batch_size, history=[[0, batch_size]])


def create_plan(facts) -> BatchPlan:
  """The plan of a run from its `lbt.engine.config.RunFacts` (this module sits
  below config.py, so it takes them as they come): the schedule, the pool,
  the microbatch, the length and a noise_scale batch's bounds, as validation
  derived them."""
  schedule = dict(facts.batch_schedule)
  length = facts.num_train_steps if schedule["name"] == "constant" else 0
  low, high = facts.batch_limits
  return BatchPlan(schedule, facts.train_examples, facts.microbatch_size, facts.num_epochs,
                   length, low, high, history=[[0, facts.batch_size]])


def planned_updates(plan: BatchPlan, limit: Optional[int] = None) -> int:
  """How many updates the plan takes from where it is, its batch decisions
  taken as they stand (exact for constant and steps; for noise_scale, with
  the current batch kept)."""
  plan = copy.deepcopy(plan)
  if plan.num_updates:
    return max(0, plan.num_updates - plan.update)
  count = 0
  if plan.name == "noise_scale" and not plan.finished():
    plan.take()  # The batch decided now, kept from here on.
    count = 1
  plan.schedule = {**plan.schedule, "name": "steps" if plan.name == "steps" else "constant"}
  while not plan.finished() and (limit is None or count < limit):
    plan.take()
    count += 1
  return count
