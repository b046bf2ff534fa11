"""Config parsing and validation: every user error is caught here, before compute.

A run is fully described by one `ml_collections.ConfigDict`. `parse_point`
turns the argument of `configs/<benchmark>.py:get_config(arg)` into typed values;
`validate` checks every field and every combination once and raises
`ConfigError` naming the field, the value and what is allowed.

Each field has one owner. `validate` owns the layout (which sections and keys
exist), the dataset, the sizes and their combinations with the machine, the
model's name, dtype and option names, bn.ghost_size against the microbatch,
the loss's label smoothing, and the microbatch against what the optimizer
needs. It calls the other owners once: `lbt.models.create` (the options'
values and bn.ghost_size's range), `lbt.optim.check` (the optimizer section),
`lbt.adversarial.check` (the optional loss.adversarial section) and
`lbt.optim.create_schedule` (the schedule against the run's length). No check
is written twice: a builder checks only the fields it owns and takes the rest
as valid.
"""

import math
import os
from typing import Any, Dict, Optional, Tuple

import ml_collections

from lbt import batch_schedule
from lbt.errors import ConfigError

# Every field a run reads, by section; anything else in a config is a typo.
TOP_LEVEL_FIELDS = (
    "seed", "dataset", "model", "batch_size", "microbatch_size", "eval_batch_size",
    "num_epochs", "num_train_steps", "optimizer", "schedule", "loss", "bn",
    "log_every_steps", "eval_every_steps", "checkpoint_every_steps", "checkpoint_keep")
# Fields a config may leave out (older configs and workdirs have none), and
# what their absence means.
OPTIONAL_FIELDS = {"batch_schedule": batch_schedule.DEFAULT, "noise_scale_split": False}
SECTION_FIELDS = {
    "dataset": ("name", "data_dir", "cache", "validation_examples", "image_size"),
    "bn": ("ghost_size",), "loss": ("label_smoothing", "adversarial")}
# Dataset fields a config may leave out, and the value that means.
# The step counter (and optax's) is int32.
MAX_UPDATES = 2**31 - 2
DATASET_DEFAULTS = {"validation_examples": 0, "image_size": 0}
# Datasets whose decoded split cannot be held as one stacked array, and why.
UNCACHEABLE = {"imagenet2012": "its decoded images differ in size and cannot be "
                               "stacked; decoding is per example"}
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


def microbatch_layout(batch: int, micro: int, num_devices: int,
                      split: bool = False) -> Tuple[int, int]:
  """(microbatches per update, examples per microbatch as padded).

  ceil(batch / micro) microbatches hold ceil or floor of batch / n real
  examples each; each is padded with masked examples up to a multiple of the
  device count, so that any batch (1,281,167 is prime) runs on any slice and
  its gradient is still the mean over exactly its real examples. With `split`
  (config.noise_scale_split), a batch that would be one microbatch is two, so
  that the gradient noise scale can be measured from the two halves.
  """
  n = math.ceil(batch / micro)
  if split and n == 1 and batch >= 2:
    n = 2
  return n, math.ceil(math.ceil(batch / n) / num_devices) * num_devices


def noise_scale_split(config) -> bool:
  """Whether a one-microbatch batch runs as two halves to measure the noise scale."""
  return bool(config.get("noise_scale_split", OPTIONAL_FIELDS["noise_scale_split"]))


def model_options(config) -> Dict[str, Any]:
  """config.model without name and dtype: the model's own keyword options."""
  return {k: v for k, v in config.model.items() if k not in ("name", "dtype")}


def _require(condition: bool, field: str, value: Any, allowed: str) -> None:
  if not condition:
    raise ConfigError(field, value, allowed)


def dataset_field(config, key: str):
  """config.dataset[key], or its DATASET_DEFAULTS value when the config has none."""
  return config.dataset[key] if key in config.dataset else DATASET_DEFAULTS[key]


def num_train_examples(config, spec) -> int:
  """Examples the run trains on: the training split less the validation hold-out."""
  return spec.num_train_examples - dataset_field(config, "validation_examples")


def _integer(field: str, value, minimum: int) -> None:
  ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
  _require(ok, field, value, "a non-negative integer" if minimum == 0 else "a positive integer")


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
  from lbt import adversarial, data, models, optim

  for key in config.keys():
    _require(key in TOP_LEVEL_FIELDS + tuple(OPTIONAL_FIELDS), key, config[key],
             "not a field lbt reads; the fields are: "
             f"{', '.join(TOP_LEVEL_FIELDS + tuple(OPTIONAL_FIELDS))}")
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

  # Each field is checked once: here, or by the one owner named beside it.
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
  held_out = dataset_field(config, "validation_examples")
  _integer("dataset.validation_examples", held_out, 0)
  _require(held_out < spec.num_train_examples, "dataset.validation_examples", held_out,
           f"fewer than the training split of {config.dataset.name} "
           f"({spec.num_train_examples} examples)")
  image_size = dataset_field(config, "image_size")
  _integer("dataset.image_size", image_size, 0)
  _require(image_size == 0 or spec.train_transform is not None, "dataset.image_size",
           image_size, f"0 ({config.dataset.name} has no transform that resizes)")
  _require(not (config.dataset.cache and config.dataset.name in UNCACHEABLE),
           "dataset.cache", config.dataset.cache,
           f"False for {config.dataset.name} ({UNCACHEABLE.get(config.dataset.name)})")

  for field in ("batch_size", "eval_batch_size", "checkpoint_keep"):
    _integer(field, config[field], 1)
  for field in ("seed", "microbatch_size", "num_train_steps", "eval_every_steps",
                "checkpoint_every_steps", "log_every_steps"):
    _integer(field, config[field], 0)
  _require(isinstance(config.num_epochs, (int, float)) and config.num_epochs > 0
           and math.isfinite(config.num_epochs),
           "num_epochs", config.num_epochs, "a positive number (finite)")

  batch, train_examples = config.batch_size, num_train_examples(config, spec)
  _require(batch <= train_examples, "batch_size", batch,
           f"at most the training set of {config.dataset.name} ({train_examples} "
           f"examples{f' after {held_out} held out for validation' if held_out else ''})")
  micro = microbatch_size(config)
  _require(micro <= batch, "microbatch_size", micro,
           f"at most batch_size ({batch}); 0 means no accumulation")
  split = config.get("noise_scale_split", OPTIONAL_FIELDS["noise_scale_split"])
  _require(isinstance(split, bool), "noise_scale_split", split,
           "True (a batch of one microbatch runs as two halves, for the gradient "
           "noise scale) or False")
  batch_schedule.check(config, train_examples=train_examples,
                       microbatch=config.microbatch_size, split=split)
  batches = scheduled_batches(config, train_examples)
  # A batch or microbatch that does not divide is padded (microbatch_layout).
  layouts = {b: microbatch_layout(b, micro, num_devices, split) for b in batches}
  _, padded = layouts[batch]
  _require(config.eval_batch_size % num_devices == 0, "eval_batch_size",
           config.eval_batch_size, f"a multiple of the device count ({num_devices})")

  # The model: name and dtype here; the options' names from the factory's
  # signature; their values, and bn.ghost_size's range, by models.create.
  _require(config.model.name in models.names(), "model.name", config.model.name,
           f"one of {', '.join(models.names())}")
  _require(config.model.dtype in DTYPES, "model.dtype", config.model.dtype,
           f"one of {', '.join(DTYPES)}")
  model_kwargs = model_options(config)
  allowed = models.options(config.model.name)
  for key in model_kwargs:
    _require(key in allowed, f"model.{key}", model_kwargs[key],
             f"allowed for {config.model.name}: {', '.join(allowed) or 'none'}")
  ghost = config.bn.ghost_size
  try:  # Building the module (no parameters yet) checks the options' values.
    models.create(config.model.name, num_classes=spec.num_classes, ghost_size=ghost,
                  **model_kwargs)
  except ConfigError:
    raise
  except (TypeError, ValueError) as e:
    raise ConfigError("model", dict(model_kwargs), f"options {config.model.name} "
                      f"accepts ({str(e).splitlines()[0]})") from None
  for b, (_, padded) in sorted(layouts.items()):
    _require(ghost == 0 or padded % ghost == 0, "bn.ghost_size", ghost,
             "0 (statistics over each microbatch) or a positive divisor of the "
             f"microbatch ({padded}{f', padded from {micro}' if padded != micro else ''}"
             f"{f' at batch {b}' if len(layouts) > 1 else ''})")

  smoothing = config.loss.label_smoothing
  _require(isinstance(smoothing, (int, float)) and 0 <= smoothing < 1,
           "loss.label_smoothing", smoothing, "a number in [0, 1)")
  if "adversarial" in config.loss:  # Absent: no adversarial loss.
    _require(isinstance(config.loss.adversarial, ml_collections.ConfigDict),
             "loss.adversarial", config.loss.adversarial, "a section (ConfigDict)")
    adversarial.check(config.loss.adversarial)

  # The optimizer's fields are owned by lbt.optim (see optim/factory.py); the
  # schedule's by optim/schedules.py, whose builder also checks the fields
  # that need the run's length. Both build only Python closures here.
  optim.check(config.optimizer)
  if "num_microbatches" in optim.needs(config.optimizer):
    smallest = min(batches)
    enough = all(layouts[b][0] >= 2 and (split or b // micro >= 2) for b in batches)
    _require(enough, "microbatch_size", config.microbatch_size,
             f"at most batch_size / 2 ({smallest // 2}) and a divisor of it: "
             f"{config.optimizer.name} estimates the gradient variance from >= 2 "
             "microbatch gradients (GSNR, Jiang et al. 2023)")
  steps_per_epoch = train_examples // batch
  updates = num_train_steps(config, steps_per_epoch)
  field = "num_train_steps" if config.num_train_steps > 0 else "num_epochs"
  _require(updates <= MAX_UPDATES, field, config[field],
           f"at most {MAX_UPDATES} updates (the update counter is int32); this is "
           f"{updates} at {steps_per_epoch} updates per epoch")
  optim.create_schedule(config.schedule, 1.0, steps_per_epoch, updates)


def scheduled_batches(config, train_examples: int) -> Tuple[int, ...]:
  """Every batch size a run may take, as far as the config fixes them (for
  noise_scale: its bounds and the multiples of the microbatch between)."""
  spec = batch_schedule.section(config)
  if spec["name"] == "steps":
    return tuple(sorted({config.batch_size, *spec["batch_sizes"]}))
  if spec["name"] == "noise_scale":
    low, high = batch_schedule.limits(config, train_examples)
    m = config.microbatch_size
    return tuple(sorted({config.batch_size, low, high,
                         *range(m * max(1, -(-low // m)), high, m)}))
  return (config.batch_size,)


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
