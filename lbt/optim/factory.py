"""Optimizers by name, from configs: registry, LR scaling rule, validation.

The trainer builds its optimizer only through these functions, so every key of
`config.optimizer` is either read here or rejected with the field's name.
Config fields other than the four below are the factory's hyperparameters.
"""

import inspect
import math
import numbers
from typing import Mapping, Optional

import optax

from lbt.errors import ConfigError
from lbt.optim import masks
from lbt.optim import schedules
from lbt.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")

# Keys of optimizer_config consumed here rather than passed to the factory.
RESERVED_KEYS = ("name", "learning_rate", "scaling", "base_batch_size")
SCALING_RULES = ("linear", "sqrt", "none")


def hyperparameter_names(name: str) -> list:
  """The factory's arguments other than learning_rate, in signature order."""
  params = inspect.signature(OPTIMIZERS.get(name)).parameters
  return [p for p in params if p != "learning_rate"]


def default_hyperparameters(name: str) -> dict:
  """The factory's defaults (those a config can hold: not None)."""
  params = inspect.signature(OPTIMIZERS.get(name, field="optimizer.name")).parameters
  return {p: v.default for p, v in params.items()
          if p != "learning_rate" and v.default is not inspect.Parameter.empty
          and v.default is not None}


# Ranges of the hyperparameters that are numbers, wherever an optimizer takes them.
_UNIT = (lambda v: 0 <= v < 1, "a number in [0, 1)")
_NON_NEGATIVE = (lambda v: v >= 0, "a number >= 0")
VALUE_RANGES = {
    "momentum": _UNIT, "b1": _UNIT, "b2": _UNIT, "decay": _UNIT,
    "eps": _NON_NEGATIVE, "weight_decay": _NON_NEGATIVE,
    "initial_accumulator_value": _NON_NEGATIVE, "initial_scale": _NON_NEGATIVE,
    "trust_coefficient": (lambda v: v > 0, "a number > 0"),
}


def _check_hyperparameters(name: str, hyperparameters: Mapping) -> None:
  allowed = hyperparameter_names(name)
  for key, value in hyperparameters.items():
    if key not in allowed:
      raise ConfigError(f"optimizer.{key}", value,
                        f"allowed for {name}: {', '.join(allowed)}")
    if key in VALUE_RANGES and value is not None:
      in_range, description = VALUE_RANGES[key]
      if (isinstance(value, bool) or not isinstance(value, (int, float))
          or not math.isfinite(value) or not in_range(value)):
        raise ConfigError(f"optimizer.{key}", value, description)


def create_by_name(name: str, learning_rate: optax.ScalarOrSchedule,
                   **hyperparameters) -> optax.GradientTransformation:
  """Calls the registered factory; unknown name -> KeyError listing names."""
  factory = OPTIMIZERS.get(name, field="optimizer.name")
  _check_hyperparameters(name, hyperparameters)
  return factory(learning_rate, **hyperparameters)


def _hyperparameters(optimizer_config: Mapping) -> dict:
  hyper = {k: optimizer_config[k] for k in optimizer_config.keys()
           if k not in RESERVED_KEYS}
  if isinstance(hyper.get("exclude"), list):  # ConfigDict keeps lists
    hyper["exclude"] = tuple(hyper["exclude"])
  return hyper


def effective_learning_rate(optimizer_config: Mapping, batch_size: int
                            ) -> float:
  """The peak LR at `batch_size` from the base LR at base_batch_size B0.

  linear: base * B / B0 (Goyal et al.); sqrt: base * sqrt(B / B0) (Krizhevsky
  2014; the LARS-ImageNet-PyTorch table); none: base.

  References:
    Goyal et al. 2017, https://arxiv.org/abs/1706.02677 ;
    Krizhevsky, "One weird trick for parallelizing convolutional neural
    networks", 2014, https://arxiv.org/abs/1404.5997
  """
  scaling = optimizer_config["scaling"] if "scaling" in optimizer_config else None
  if scaling not in SCALING_RULES:
    raise ConfigError("optimizer.scaling", scaling,
                      f"one of {', '.join(SCALING_RULES)}")
  if "learning_rate" not in optimizer_config:
    raise ConfigError("optimizer.learning_rate", None, "a number >= 0")
  base = optimizer_config["learning_rate"]
  if (isinstance(base, bool) or not isinstance(base, numbers.Real)
      or not base >= 0):
    raise ConfigError("optimizer.learning_rate", base, "a number >= 0")
  if scaling == "none":
    return float(base)
  b0 = (optimizer_config["base_batch_size"]
        if "base_batch_size" in optimizer_config else None)
  if isinstance(b0, bool) or not isinstance(b0, numbers.Integral) or b0 < 1:
    raise ConfigError("optimizer.base_batch_size", b0,
                      f"an int >= 1 (needed by scaling={scaling!r})")
  if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
    raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")
  ratio = batch_size / b0
  return float(base * (ratio if scaling == "linear" else math.sqrt(ratio)))


def check(optimizer_config: Mapping,
          schedule_config: Optional[Mapping] = None) -> None:
  """Validates names, keys and cheap values; builds nothing.

  Raises ConfigError naming the field: optimizer.name, optimizer.<key> for a
  key the optimizer does not take, optimizer.scaling, optimizer.exclude (bad
  regex), schedule.name and schedule.<key>.
  """
  name = optimizer_config["name"] if "name" in optimizer_config else None
  try:
    OPTIMIZERS.get(name, field="optimizer.name")
  except KeyError:
    raise ConfigError("optimizer.name", name,
                      f"one of {', '.join(OPTIMIZERS.names())}") from None
  hyper = _hyperparameters(optimizer_config)
  _check_hyperparameters(name, hyper)
  if "exclude" in hyper:
    masks.compile_exclude(hyper["exclude"])
  if "scaling" in optimizer_config and (
      optimizer_config["scaling"] not in SCALING_RULES):
    raise ConfigError("optimizer.scaling", optimizer_config["scaling"],
                      f"one of {', '.join(SCALING_RULES)}")
  if schedule_config is not None:
    schedules.check_schedule(schedule_config)


def create(optimizer_config: Mapping, schedule: optax.ScalarOrSchedule
           ) -> optax.GradientTransformation:
  """The configured optimizer, with `schedule` (or a float) as learning rate.

  optimizer_config.learning_rate is not read here: the trainer turns it into
  the peak of `schedule` via effective_learning_rate and create_schedule.
  """
  check(optimizer_config)
  return create_by_name(optimizer_config["name"], schedule,
                        **_hyperparameters(optimizer_config))
