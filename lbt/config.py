"""Config parsing and validation: every user error is caught here, before compute.

A run is fully described by one `ml_collections.ConfigDict`. `parse_point`
turns the argument of `configs/<benchmark>.py:get_config(arg)` into typed values;
`validate` checks every field and every combination once and raises
`ConfigError` naming the field, the value and what is allowed.
"""

import math
import os
from typing import Any, Dict, Optional

import ml_collections

from lbt.errors import ConfigError

BN_MODES = ("batch", "ghost")
# Every field a run reads, by section; anything else in a config is a typo.
TOP_LEVEL_FIELDS = (
    "seed", "dataset", "model", "batch_size", "microbatch_size", "eval_batch_size",
    "num_epochs", "num_train_steps", "optimizer", "schedule", "loss", "bn",
    "log_every_steps", "eval_every_steps", "checkpoint_every_steps", "checkpoint_keep")
SECTION_FIELDS = {"dataset": ("name", "data_dir", "cache"), "bn": ("mode", "ghost_size"),
                  "loss": ("label_smoothing",)}
DTYPES = ("float32", "bfloat16")


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string",
               bool: "true or false"}


def parse_point(arg: Optional[str], **defaults) -> ml_collections.ConfigDict:
  """Parses "lars,batch=8192,epochs=20" into typed values.

  The first bare word (no `=`) is the optimizer. Every other key must be one of
  `defaults`, whose type it takes; unknown keys and bad values raise ConfigError.
  """
  values = dict(defaults)
  for token in filter(None, (t.strip() for t in (arg or "").split(","))):
    key, sep, raw = token.partition("=")
    if not sep:
      key, raw = "optimizer", token
    if key not in defaults:
      raise ConfigError(f"config argument {key!r}", raw,
                        f"allowed keys: {', '.join(sorted(defaults))}")
    kind = type(defaults[key])
    try:
      if kind is bool:
        if raw.lower() not in ("true", "false", "1", "0"):
          raise ValueError(raw)
        values[key] = raw.lower() in ("true", "1")
      else:
        values[key] = kind(raw)
    except ValueError:
      raise ConfigError(f"config argument {key!r}", raw,
                        _TYPE_NAMES.get(kind, kind.__name__)) from None
  return ml_collections.ConfigDict(values)


def num_train_steps(config, steps_per_epoch: int) -> int:
  """Updates of the run: `num_train_steps` if set, else epochs x updates/epoch."""
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return max(1, int(round(config.num_epochs * steps_per_epoch)))


def microbatch_size(config) -> int:
  """The global size of one accumulation step; 0 in the config means no accumulation."""
  return config.microbatch_size or config.batch_size


def model_options(config) -> Dict[str, Any]:
  """config.model without name and dtype: the model's own keyword options."""
  return {k: v for k, v in config.model.items() if k not in ("name", "dtype")}


def _require(condition: bool, field: str, value: Any, allowed: str) -> None:
  if not condition:
    raise ConfigError(field, value, allowed)


def _positive_int(config, field: str, allow_zero: bool = False) -> None:
  value = config[field] if "." not in field else _get(config, field)
  ok = isinstance(value, int) and not isinstance(value, bool) and (
      value >= 0 if allow_zero else value > 0)
  _require(ok, field, value, "a non-negative integer" if allow_zero else "a positive integer")


def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def validate(config: ml_collections.ConfigDict, *, num_devices: int,
             num_processes: int = 1) -> None:
  """Checks a whole run config against itself, the dataset and the machine.

  Args:
    config: the run's config.
    num_devices: the global device count the run will shard over.
    num_processes: how many host processes share the global batch.

  Raises:
    ConfigError naming the first bad field.
  """
  # Imported here: the registries import jax/flax, which validation should not
  # need to be imported before the command line is parsed.
  from lbt import data, models, optim

  for key in config.keys():
    _require(key in TOP_LEVEL_FIELDS, key, config[key],
             f"not a field lbt reads; the fields are: {', '.join(TOP_LEVEL_FIELDS)}")
  sections = ("dataset", "model", "optimizer", "schedule", "loss", "bn")
  for field in TOP_LEVEL_FIELDS:
    _require(field in config, field, None, "a section of the config (ConfigDict)"
             if field in sections else "a field every config must have")
  for section in sections:
    _require(isinstance(config[section], ml_collections.ConfigDict),
             section, config.get(section), "a section of the config (ConfigDict)")
  for section, fields in SECTION_FIELDS.items():
    for key in config[section].keys():
      _require(key in fields, f"{section}.{key}", config[section][key],
               f"not a field lbt reads; {section} has: {', '.join(fields)}")

  _require(config.dataset.name in data.DATASETS, "dataset.name", config.dataset.name,
           f"one of {', '.join(data.DATASETS.names())}")
  spec = data.DATASETS.get(config.dataset.name)
  data_dir = config.dataset.data_dir
  _require(isinstance(data_dir, str), "dataset.data_dir", data_dir, "a directory path")
  if data_dir and not data_dir.startswith("gs://"):
    _require(os.path.isdir(data_dir), "dataset.data_dir", data_dir,
             "an existing directory (create it, or leave it empty for the default "
             f"{data.default_data_dir()})")
  _require(isinstance(config.dataset.cache, bool), "dataset.cache", config.dataset.cache,
           "True (decode the split once into memory) or False")

  _require(config.model.name in models.names(), "model.name", config.model.name,
           f"one of {', '.join(models.names())}")
  _require(config.model.dtype in DTYPES, "model.dtype", config.model.dtype,
           f"one of {', '.join(DTYPES)}")
  model_kwargs = model_options(config)
  allowed = _model_hyperparameters(config.model.name)
  for key in model_kwargs:
    _require(key in allowed, f"model.{key}", model_kwargs[key],
             f"allowed for {config.model.name}: {', '.join(allowed) or 'none'}")

  for field in ("batch_size", "eval_batch_size", "seed"):
    _positive_int(config, field, allow_zero=(field == "seed"))
  for field in ("microbatch_size", "num_train_steps", "eval_every_steps",
                "checkpoint_every_steps", "log_every_steps", "checkpoint_keep"):
    _positive_int(config, field, allow_zero=(field != "checkpoint_keep"))
  _require(isinstance(config.num_epochs, (int, float)) and config.num_epochs > 0,
           "num_epochs", config.num_epochs, "a positive number")

  batch = config.batch_size
  _require(batch <= spec.num_train_examples, "batch_size", batch,
           f"at most the training set of {config.dataset.name} "
           f"({spec.num_train_examples} examples)")
  micro = microbatch_size(config)
  _require(micro <= batch, "microbatch_size", micro,
           f"at most batch_size ({batch}); 0 means no accumulation")
  _require(batch % micro == 0, "microbatch_size", micro,
           f"a divisor of batch_size ({batch})")
  _require(micro % num_devices == 0, "microbatch_size" if config.microbatch_size else "batch_size",
           micro, f"a multiple of the device count ({num_devices})")
  _require(micro % num_processes == 0, "microbatch_size", micro,
           f"a multiple of the process count ({num_processes})")
  _require(config.eval_batch_size % num_devices == 0, "eval_batch_size",
           config.eval_batch_size, f"a multiple of the device count ({num_devices})")

  _require(config.bn.mode in BN_MODES, "bn.mode", config.bn.mode,
           f"one of {', '.join(BN_MODES)}")
  ghost = config.bn.ghost_size
  _require(isinstance(ghost, int) and ghost >= 0, "bn.ghost_size", ghost,
           "a non-negative integer")
  if config.bn.mode == "ghost":
    _require(ghost > 0 and micro % ghost == 0, "bn.ghost_size", ghost,
             f"a positive divisor of the microbatch ({micro}) when bn.mode='ghost'")
  else:
    _require(ghost == 0, "bn.ghost_size", ghost, "0 unless bn.mode='ghost'")

  try:  # Building the module (no parameters yet) checks the options' values.
    models.create(config.model.name, num_classes=spec.num_classes,
                  ghost_size=config.bn.ghost_size, **model_kwargs)
  except (TypeError, ValueError) as e:
    raise ConfigError("model", dict(model_kwargs), f"options {config.model.name} "
                      f"accepts ({str(e).splitlines()[0]})") from None

  smoothing = config.loss.label_smoothing
  _require(isinstance(smoothing, (int, float)) and 0 <= smoothing < 1,
           "loss.label_smoothing", smoothing, "a number in [0, 1)")

  steps_per_epoch = spec.num_train_examples // batch
  optim.check(config.optimizer, config.schedule)
  _require(math.isfinite(optim.effective_learning_rate(config.optimizer, batch)),
           "optimizer.learning_rate", config.optimizer.learning_rate, "a finite number")
  # Building the schedule is cheap and checks its length against the run.
  optim.create_schedule(config.schedule, 1.0, steps_per_epoch,
                        num_train_steps(config, steps_per_epoch))


def _model_hyperparameters(name: str) -> tuple:
  """The keyword options a model accepts from `config.model`, besides its name."""
  import inspect
  from lbt.models.common import MODELS
  internal = {"num_classes", "ghost_size", "dtype"}
  return tuple(p for p in inspect.signature(MODELS.get(name)).parameters
               if p not in internal)


def changed_fields(old: Dict[str, Any], new: Dict[str, Any], prefix: str = "") -> list:
  """Dotted names of the fields whose values differ between two config dicts."""
  changed = []
  for key in sorted(set(old) | set(new)):
    name = f"{prefix}{key}"
    a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
    if isinstance(a, dict) and isinstance(b, dict):
      changed += changed_fields(a, b, name + ".")
    elif a != b:
      changed.append(name)
  return changed
