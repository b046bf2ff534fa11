"""Learning-rate schedules: linear warmup, then poly, cosine, multistep or constant.

All schedules are functions of the 0-based update count c (the number of
updates already applied, i.e. optax's `count`). With peak P, end E,
W = round(warmup_epochs * steps_per_epoch) warmup updates (Python round, half
to even), N = num_train_steps and D = N - W >= 1 decay updates, k = c - W:

  warmup (c < W):  P * (c + 1) / W
      The first update already moves (P/W) and update W-1 uses exactly P, so no
      update is wasted at LR 0 and the decay starts from P. MLPerf's
      P * c / W spends its first update at 0.
  poly:      E + (P - E) * (1 - k / (D - 1)) ** power
  cosine:    E + (P - E) * (1 + cos(pi * k / (D - 1))) / 2
      k is clipped to [0, D - 1], so update W uses P and the last update
      N - 1 uses exactly E (later counts stay at E). When D == 1 the single
      decay update uses P.
  multistep: P * factor ** #{i : c >= ceil(decay_epochs[i] * steps_per_epoch)}
      i.e. the decay applies from the first update whose epoch c /
      steps_per_epoch has reached decay_epochs[i]. Decay epochs are absolute
      (counted from the start of training, as in Goyal et al.) and may not
      fall inside the warmup.
  constant:  P

References:
  Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour",
  2017 (warmup, multistep); You, Gitman, Ginsburg 2017 (poly, power 2).
"""

import math
import numbers
from typing import Mapping

import jax.numpy as jnp
import optax

from lbt.errors import ConfigError
from lbt.registry import Registry

_COMMON = ("name", "warmup_epochs")
SCHEDULE_KEYS = {
    "poly": _COMMON + ("end_learning_rate", "power"),
    "cosine": _COMMON + ("end_learning_rate",),
    "multistep": _COMMON + ("decay_epochs", "decay_factor"),
    "constant": _COMMON,
}


def _get(config, key, default):
  return config[key] if key in config else default


def _number(config, key, default, minimum=0.0):
  value = _get(config, key, default)
  if (isinstance(value, bool) or not isinstance(value, numbers.Real)
      or not math.isfinite(value) or value < minimum):
    raise ConfigError(f"schedule.{key}", value, f"a number >= {minimum}")
  return float(value)


def check_schedule(schedule_config: Mapping) -> None:
  """Validates the name, that every key is used, and value ranges.

  Checks that need step counts (warmup vs run length, decay epochs vs
  warmup) happen in `create_schedule`, where those counts are known.
  """
  name = _get(schedule_config, "name", None)
  if name not in SCHEDULE_KEYS:
    raise ConfigError("schedule.name", name,
                      f"one of {', '.join(sorted(SCHEDULE_KEYS))}")
  allowed = SCHEDULE_KEYS[name]
  for key in schedule_config.keys():
    if key not in allowed:
      raise ConfigError(f"schedule.{key}", schedule_config[key],
                        f"not used by schedule {name!r}; allowed: "
                        f"{', '.join(allowed)}")
  _number(schedule_config, "warmup_epochs", 0.0)
  if name in ("poly", "cosine"):
    _number(schedule_config, "end_learning_rate", 0.0)
  if name == "poly":
    _number(schedule_config, "power", 2.0, minimum=0.0)
  if name == "multistep":
    _number(schedule_config, "decay_factor", 0.1)
    epochs = _get(schedule_config, "decay_epochs", None)
    if (not isinstance(epochs, (list, tuple))
        or not all(isinstance(e, numbers.Real) and not isinstance(e, bool)
                   and e >= 0 for e in epochs)
        or any(b <= a for a, b in zip(epochs, epochs[1:]))):
      raise ConfigError("schedule.decay_epochs", epochs,
                        "a list of increasing epochs >= 0")


def warmup_steps(schedule_config: Mapping, steps_per_epoch: int) -> int:
  """W = round(warmup_epochs * steps_per_epoch), the number of warmup updates."""
  return round(_number(schedule_config, "warmup_epochs", 0.0) * steps_per_epoch)


def _cosine(peak, end, steps):
  """Half cosine from peak (count 0) to end (count `steps`), then end."""
  if steps <= 0:
    return optax.constant_schedule(peak)

  def schedule(count):
    frac = jnp.clip(count, 0, steps) / steps
    return end + (peak - end) * 0.5 * (1 + jnp.cos(jnp.pi * frac))

  return schedule


# What follows the warmup, by schedule.name. Each builds a schedule of
# k = count - W from (config, peak P, warmup W, last k = D - 1, steps/epoch).
DECAYS: Registry = Registry("schedule")


@DECAYS.register("poly")
def _poly(config, peak, warmup, last, steps_per_epoch):
  del warmup, steps_per_epoch
  return optax.polynomial_schedule(
      peak, _number(config, "end_learning_rate", 0.0),
      _number(config, "power", 2.0), transition_steps=last)


@DECAYS.register("cosine")
def _cosine_decay(config, peak, warmup, last, steps_per_epoch):
  del warmup, steps_per_epoch
  return _cosine(peak, _number(config, "end_learning_rate", 0.0), last)


@DECAYS.register("multistep")
def _multistep(config, peak, warmup, last, steps_per_epoch):
  del last
  boundaries = {}
  for epoch in config["decay_epochs"]:
    # round() guards ceil against 0.1 * 30 = 3.0000000000000004.
    step = math.ceil(round(epoch * steps_per_epoch, 9))
    if step < warmup:
      raise ConfigError(
          "schedule.decay_epochs", config["decay_epochs"],
          f"each decay epoch must be >= warmup_epochs "
          f"({epoch} is update {step}, warmup ends at update {warmup})")
    if step - warmup in boundaries:
      raise ConfigError(
          "schedule.decay_epochs", config["decay_epochs"],
          f"epochs {epoch} and an earlier one fall on the same update {step}")
    boundaries[step - warmup] = _number(config, "decay_factor", 0.1)
  return optax.piecewise_constant_schedule(peak, boundaries)


@DECAYS.register("constant")
def _constant(config, peak, warmup, last, steps_per_epoch):
  del config, warmup, last, steps_per_epoch
  return optax.constant_schedule(peak)


def create_schedule(schedule_config: Mapping, peak_learning_rate: float,
                    steps_per_epoch: int, num_train_steps: int
                    ) -> optax.Schedule:
  """Builds the schedule defined in the module docstring.

  Args:
    schedule_config: name, warmup_epochs and the chosen schedule's fields.
    peak_learning_rate: P, the LR after warmup (already batch-scaled).
    steps_per_epoch: updates per epoch (1 for full-batch training).
    num_train_steps: N, total number of updates of the run.

  Returns:
    A function of the 0-based update count returning the LR as a jnp scalar.
  """
  check_schedule(schedule_config)
  for arg, value in (("steps_per_epoch", steps_per_epoch),
                     ("num_train_steps", num_train_steps)):
    if not isinstance(value, numbers.Integral) or value < 1:
      raise ValueError(f"{arg}={value!r} must be an int >= 1")
  steps_per_epoch, num_train_steps = int(steps_per_epoch), int(num_train_steps)
  name = schedule_config["name"]
  peak = float(peak_learning_rate)
  w = warmup_steps(schedule_config, steps_per_epoch)
  if w >= num_train_steps:
    raise ConfigError(
        "schedule.warmup_epochs", schedule_config["warmup_epochs"],
        f"warmup ({w} updates at {steps_per_epoch} per epoch) must be shorter "
        f"than the run ({num_train_steps} updates)")
  last = num_train_steps - w - 1  # k of the last update, D - 1

  decay = DECAYS.get(name, field="schedule.name")(
      schedule_config, peak, w, last, steps_per_epoch)

  if w > 0:
    # linear_schedule(P/W, P, W-1) is P/W + (P - P/W) * c/(W-1) = P*(c+1)/W.
    warmup = optax.linear_schedule(peak / w, peak, transition_steps=w - 1)
    schedule = optax.join_schedules([warmup, decay], [w])
  else:
    schedule = decay
  # optax turns an int32 count into float32 even with x64 enabled; a count in
  # the default float dtype keeps float64 schedules exact (counts < 2**24 are
  # exact in float32 too).
  float_dtype = jnp.result_type(float)
  return lambda count: jnp.asarray(schedule(jnp.asarray(count, float_dtype)))
