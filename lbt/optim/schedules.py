"""Learning-rate schedules: linear warmup, then poly, cosine, multistep or constant.

All schedules are functions of the 0-based update count c (the number of
updates already applied, i.e. optax's `count`). With peak P, end E,
W = round(warmup_epochs * steps_per_epoch) warmup updates (Python round, half
to even), N = num_train_steps and D = N - W >= 1 decay updates, k = c - W.
A run shorter than its warmup (W >= N, e.g. a smoke run of 30 updates on a
config with a 1-epoch warmup) runs with W = min(ceil(N / 10), N - 1): the
warmup becomes 10 % of the run, rounded up, and at least one update decays;
`warmup_note` says so in one line.

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
from typing import Mapping, Optional

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
DEFAULTS = dict(warmup_epochs=0.0, end_learning_rate=0.0, power=2.0, decay_factor=0.1)
# A run shorter than its warmup warms up for this share of its updates.
SHORT_RUN_WARMUP_PERCENT = 10  # rounded up to whole updates


def _get(config, key):
  return config[key] if key in config else DEFAULTS.get(key)


def check_schedule(schedule_config: Mapping) -> None:
  """Validates the name, that every key is used, and value ranges.

  The one owner of the schedule's fields; the builders below read them
  unchecked. The checks that need step counts (decay epochs against the
  warmup) are made where those counts are known, in `_multistep`.
  """
  name = _get(schedule_config, "name")
  if name not in SCHEDULE_KEYS:
    raise ConfigError("schedule.name", name,
                      f"one of {', '.join(sorted(SCHEDULE_KEYS))}")
  allowed = SCHEDULE_KEYS[name]
  for key in schedule_config.keys():
    if key not in allowed:
      raise ConfigError(f"schedule.{key}", schedule_config[key],
                        f"not used by schedule {name!r}; allowed: "
                        f"{', '.join(allowed)}")
  for key in (k for k in allowed if k in DEFAULTS):
    value = _get(schedule_config, key)
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
        or not math.isfinite(value) or value < 0):
      raise ConfigError(f"schedule.{key}", value, "a number >= 0.0")
  if name == "multistep":
    epochs = _get(schedule_config, "decay_epochs")
    if (not isinstance(epochs, (list, tuple))
        or not all(isinstance(e, numbers.Real) and not isinstance(e, bool)
                   and e >= 0 for e in epochs)
        or any(b <= a for a, b in zip(epochs, epochs[1:]))):
      raise ConfigError("schedule.decay_epochs", epochs,
                        "a list of increasing epochs >= 0")


def warmup_steps(schedule_config: Mapping, steps_per_epoch: int,
                 num_train_steps: Optional[int] = None) -> int:
  """The number of warmup updates W.

  round(warmup_epochs * steps_per_epoch); given the run's length N and
  W >= N, the short-run warmup min(ceil(N / 10), N - 1) instead.
  """
  w = round(float(_get(schedule_config, "warmup_epochs")) * steps_per_epoch)
  if num_train_steps is None or w < num_train_steps:
    return w
  return min(-(-num_train_steps * SHORT_RUN_WARMUP_PERCENT // 100), num_train_steps - 1)


def warmup_note(schedule_config: Mapping, steps_per_epoch: int,
                num_train_steps: int) -> Optional[str]:
  """One line saying that the warmup was shortened to fit the run; else None."""
  configured = warmup_steps(schedule_config, steps_per_epoch)
  used = warmup_steps(schedule_config, steps_per_epoch, num_train_steps)
  if used == configured:
    return None
  return (f"lbt: the run ({num_train_steps} updates) is shorter than its warmup "
          f"(schedule.warmup_epochs={_get(schedule_config, 'warmup_epochs')}: "
          f"{configured} updates at {steps_per_epoch} per epoch); warming up for "
          f"{used} updates instead ({SHORT_RUN_WARMUP_PERCENT} % of the run, "
          "rounded up, leaving at least one update to decay)")


# What follows the warmup, by schedule.name. Each builds a schedule of
# k = count - W from (config, peak P, warmup W, last k = D - 1, steps/epoch).
DECAYS: Registry = Registry("schedule")


@DECAYS.register("poly")
def _poly(config, peak, warmup, last, steps_per_epoch):
  del warmup, steps_per_epoch
  return optax.polynomial_schedule(
      peak, float(_get(config, "end_learning_rate")), float(_get(config, "power")),
      transition_steps=last)


@DECAYS.register("cosine")
def _cosine(config, peak, warmup, last, steps_per_epoch):
  """E + (P - E) * (1 + cos(pi * k / last)) / 2, k clipped to [0, last].

  optax's cosine decay from P - E to 0, lifted by E: the same numbers as
  alpha = E / P, without dividing by a peak that may be 0.
  """
  del warmup, steps_per_epoch
  end = float(_get(config, "end_learning_rate"))
  if last <= 0:  # One decay update, at the peak.
    return optax.constant_schedule(peak)
  decay = optax.cosine_decay_schedule(peak - end, decay_steps=last)
  return lambda count: end + decay(count)


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
    boundaries[step - warmup] = float(_get(config, "decay_factor"))
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
    schedule_config: name, warmup_epochs and the chosen schedule's fields
      (checked by `check_schedule`).
    peak_learning_rate: P, the LR after warmup (already batch-scaled).
    steps_per_epoch: updates per epoch (1 for full-batch training), >= 1.
    num_train_steps: N, total number of updates of the run, >= 1.

  Returns:
    A function of the 0-based update count returning the LR as a jnp scalar.
  """
  check_schedule(schedule_config)
  steps_per_epoch, num_train_steps = int(steps_per_epoch), int(num_train_steps)
  peak = float(peak_learning_rate)
  w = warmup_steps(schedule_config, steps_per_epoch, num_train_steps)
  last = num_train_steps - w - 1  # k of the last update, D - 1

  decay = DECAYS.get(schedule_config["name"], field="schedule.name")(
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
