"""Optimizers by name, from configs: registry, LR scaling rule, validation.

The trainer builds its optimizer only through these functions, so every key of
`config.optimizer` is either read here or rejected with the field's name.
Config fields other than the four below are the factory's hyperparameters.

Each field has one owner that checks it: `optimizer.name` is checked by
`check`; learning_rate, scaling and base_batch_size by
`effective_learning_rate`, which reads them; clip_norm by `clip_norm`, which
`create` reads; the hyperparameters (keys and
ranges) by `create_by_name`, the one door to a factory; `exclude` by
`masks.compile_exclude` inside the factory. `check` reaches every one of them
without training, so `lbt.engine.config.validate` calls only `check`.
"""

import math
import numbers
from typing import Mapping, Optional

import optax

from lbt.errors import ConfigError
from lbt.optim import schedules
from lbt.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")

# Keys of optimizer_config consumed here rather than passed to the factory.
RESERVED_KEYS = ("name", "learning_rate", "scaling", "base_batch_size", "clip_norm")
SCALING_RULES = ("linear", "sqrt", "none")


def _options(name: str) -> dict:
  return OPTIMIZERS.options(name, internal=("learning_rate",))


def hyperparameter_names(name: str) -> list:
  """The factory's arguments other than learning_rate, in signature order."""
  return list(_options(name))


def default_hyperparameters(name: str) -> dict:
  """The factory's defaults (those a config can hold: not None)."""
  return {k: v for k, v in _options(name).items()
          if v is not None and v is not Registry.REQUIRED}


# Ranges of the hyperparameters that are numbers, wherever an optimizer takes them.
_UNIT = (lambda v: 0 <= v < 1, "a number in [0, 1)")
_NON_NEGATIVE = (lambda v: v >= 0, "a number >= 0")
_POSITIVE = (lambda v: v > 0, "a number > 0")
# gamma_low <= gamma_high involves two keys: gsnr.check_band owns it.
VALUE_RANGES = {
    "momentum": _UNIT, "b1": _UNIT, "b2": _UNIT, "b3": _UNIT, "decay": _UNIT,
    "eps": _NON_NEGATIVE, "weight_decay": _NON_NEGATIVE,
    "initial_accumulator_value": _NON_NEGATIVE, "initial_scale": _NON_NEGATIVE,
    "trust_coefficient": _POSITIVE, "gamma_low": _POSITIVE, "gamma_high": _POSITIVE,
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
  """Calls the registered factory; unknown name -> KeyError listing names.

  The hyperparameters' keys and ranges are checked here (ConfigError naming
  `optimizer.<key>`), so that every way to an optimizer checks them.
  """
  factory = OPTIMIZERS.get(name, field="optimizer.name")
  _check_hyperparameters(name, hyperparameters)
  return factory(learning_rate, **hyperparameters)


def _hyperparameters(optimizer_config: Mapping) -> dict:
  hyper = {k: optimizer_config[k] for k in optimizer_config.keys()
           if k not in RESERVED_KEYS}
  if isinstance(hyper.get("exclude"), list):  # ConfigDict keeps lists
    hyper["exclude"] = tuple(hyper["exclude"])
  return hyper


def _field(optimizer_config: Mapping, key: str):
  return optimizer_config[key] if key in optimizer_config else None


def effective_learning_rate(optimizer_config: Mapping, batch_size: int) -> float:
  """The peak LR at `batch_size` from the base LR at base_batch_size B0.

  linear: base * B / B0 (Goyal et al.); sqrt: base * sqrt(B / B0) (Krizhevsky
  2014; the LARS-ImageNet-PyTorch table); none: base. The owner of the three
  fields it reads: a bad one raises ConfigError naming it.

  References:
    Goyal et al. 2017, https://arxiv.org/abs/1706.02677 ;
    Krizhevsky, "One weird trick for parallelizing convolutional neural
    networks", 2014, https://arxiv.org/abs/1404.5997
  """
  scaling = _field(optimizer_config, "scaling")
  if scaling not in SCALING_RULES:
    raise ConfigError("optimizer.scaling", scaling, f"one of {', '.join(SCALING_RULES)}")
  base = _field(optimizer_config, "learning_rate")
  if (isinstance(base, bool) or not isinstance(base, numbers.Real)
      or not math.isfinite(base) or base < 0):
    raise ConfigError("optimizer.learning_rate", base, "a finite number >= 0")
  if scaling == "none":
    return float(base)
  b0 = _field(optimizer_config, "base_batch_size")
  if isinstance(b0, bool) or not isinstance(b0, numbers.Integral) or b0 < 1:
    raise ConfigError("optimizer.base_batch_size", b0,
                      f"an int >= 1 (needed by scaling={scaling!r})")
  ratio = batch_size / b0
  return float(base * (ratio if scaling == "linear" else math.sqrt(ratio)))


def check(optimizer_config: Mapping,
          schedule_config: Optional[Mapping] = None) -> None:
  """Validates the optimizer section (and the schedule's own fields); trains nothing.

  Runs each field's owner once: the name here, the learning-rate fields in
  `effective_learning_rate`, the hyperparameters and `exclude` by building
  the optax chain (pure Python closures, no arrays). With `schedule_config`,
  also `schedules.check_schedule` (the fields that need no step counts).

  Raises:
    ConfigError naming the field.
  """
  name = _field(optimizer_config, "name")
  if name not in OPTIMIZERS:
    raise ConfigError("optimizer.name", name, f"one of {', '.join(OPTIMIZERS.names())}")
  effective_learning_rate(optimizer_config, 1)
  create(optimizer_config, 0.0)
  if schedule_config is not None:
    schedules.check_schedule(schedule_config)


def clip_norm(optimizer_config: Mapping) -> float:
  """optimizer.clip_norm: the largest L2 norm of the whole gradient (0 or
  absent: no clipping). ConfigError for a bad value."""
  value = _field(optimizer_config, "clip_norm")
  if value is None:
    return 0.0
  if (isinstance(value, bool) or not isinstance(value, numbers.Real)
      or not math.isfinite(value) or value < 0):
    raise ConfigError("optimizer.clip_norm", value,
                      "a finite number >= 0: the largest global L2 norm of the "
                      "gradient (0: no clipping)")
  return float(value)


def create(optimizer_config: Mapping, schedule: optax.ScalarOrSchedule
           ) -> optax.GradientTransformation:
  """The configured optimizer, with `schedule` (or a float) as learning rate.

  optimizer_config.learning_rate is not read here: the trainer turns it into
  the peak of `schedule` via effective_learning_rate and create_schedule.
  With `clip_norm` > 0 the gradient is first scaled to at most that global L2
  norm (optax.clip_by_global_norm; Geiping et al. 2022 clip the full-batch
  gradient to 0.25), before the optimizer adds its weight decay; without it
  the chain is the optimizer's alone.
  """
  tx = create_by_name(optimizer_config["name"], schedule,
                      **_hyperparameters(optimizer_config))
  limit = clip_norm(optimizer_config)
  return optax.chain(optax.clip_by_global_norm(limit), tx) if limit else tx


def create_with_learning_rate_input(optimizer_config: Mapping
                                    ) -> optax.GradientTransformation:
  """The configured optimizer with its learning rate held in its state
  (`optax.inject_hyperparams`), for a step that sets it each update with
  `set_learning_rate`: a run whose batch changes takes its LR from the
  schedule at the epochs trained, which the update count does not give."""
  return optax.inject_hyperparams(
      lambda learning_rate: create(optimizer_config, learning_rate))(learning_rate=0.0)


def set_learning_rate(opt_state, learning_rate):
  """`opt_state` of `create_with_learning_rate_input` with the next update's LR."""
  return opt_state._replace(hyperparams={**opt_state.hyperparams,
                                         "learning_rate": learning_rate})


def needs(optimizer_config: Mapping) -> tuple:
  """What the optimizer needs from the step besides the averaged gradient
  (a factory's `needs` attribute: 'microbatch_grad_sq', 'per_example_grad_norm')."""
  return tuple(getattr(OPTIMIZERS.get(optimizer_config["name"], field="optimizer.name"),
                       "needs", ()))
