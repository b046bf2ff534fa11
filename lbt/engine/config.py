"""A run's config: the point-argument parser, validation, and the facts it derives.

A run is fully described by one `ml_collections.ConfigDict`. Its one list of
fields, each default beside what it is, is `lbt.engine.schema.SCHEMA` (read
top to bottom as flax's `configs/default.py`); the benchmark files
(`configs/<benchmark>.py`) set the values. `parse_point`
turns the argument of `configs/<benchmark>.py:get_config(arg)` into typed values;
`validate` checks every field and every combination once, raises `ConfigError`
naming the field, the value and what is allowed, and returns `RunFacts`: what
it derived (examples, microbatch layouts, updates per epoch, run length, peak
learning rate, filled sections), the one source the loop, the batch plan, the
study and the report read. `changed_fields` compares two configs (resuming a
workdir).

Each field has one owner. `validate` owns the layout (which sections and keys
exist), the dataset, the sizes and their combinations with the machine, the
model's name, dtype and option names, bn.ghost_size against the microbatch,
the loss's label smoothing, and the microbatch against what the optimizer
needs. It calls the other owners once: `lbt.models.create` (the options'
values and bn.ghost_size's range), `lbt.optim.check` (the optimizer section),
`lbt.engine.adversarial.check` (the optional loss.adversarial section, its
defaults filled in there), `lbt.engine.regularizers.check` (the optional
loss.gradient_penalty) and `lbt.optim.create_schedule` (the schedule
against the run's length). No check
is written twice: a builder checks only the fields it owns and takes the rest
as valid.
"""

import dataclasses
import json
import math
import os
from typing import Any, Dict, Optional, Tuple

import ml_collections

from lbt.data import slots
from lbt.engine import batch_schedule
from lbt.engine.schema import (  # the fields, each documented there
    DATASET_DEFAULTS, DTYPES, OPTIONAL_FIELDS, REQUIRED_SECTIONS, SECTION_FIELDS,
    TARGET_DEFAULTS, TARGET_FIELDS, TARGET_METRICS, TOP_LEVEL_FIELDS)
from lbt.errors import ConfigError

# The step counter (and optax's) is int32.
MAX_UPDATES = 2**31 - 2
# Datasets whose decoded split cannot be held as one stacked array, and why.
UNCACHEABLE = {"imagenet2012": "its decoded images differ in size and cannot be "
                               "stacked; decoding is per example"}


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


def updates_per_epoch(train_examples: int, batch: int) -> int:
  """Updates of `batch` in one epoch (each epoch drops its last
  train_examples mod batch examples): the one rule, for the run and the limit."""
  return train_examples // batch


def model_options(config) -> Dict[str, Any]:
  """config.model without name and dtype: the model's own keyword options."""
  return {k: v for k, v in config.model.items() if k not in ("name", "dtype")}


def _require(condition: bool, field: str, value: Any, allowed: str) -> None:
  if not condition:
    raise ConfigError(field, value, allowed)


def dataset_field(config, key: str):
  """config["dataset"][key], or its DATASET_DEFAULTS value when the config
  has none (a ConfigDict, or a config.json read as a dict)."""
  dataset = config["dataset"]
  return dataset[key] if key in dataset else DATASET_DEFAULTS[key]


def num_train_examples(config, spec) -> int:
  """Examples the run trains on: the training split less the validation hold-out."""
  return spec.num_train_examples - dataset_field(config, "validation_examples")


def _integer(field: str, value, minimum: int) -> None:
  ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
  _require(ok, field, value, "a non-negative integer" if minimum == 0 else "a positive integer")


# Facts of the device count too: a resume on another count does not compare them.
DEVICE_FACTS = ("num_devices", "layouts")


@dataclasses.dataclass(frozen=True)
class RunFacts:
  """What validation derived from a config, once: every layer reads these.

  The pipeline, the batch plan, the loop, the study's time estimate, the
  limit and the results take their numbers from here instead of deriving
  them again; the run writes them beside config.json (layout.FACTS), and a
  resume checks them (lbt.engine.workdir.check_facts).
  """
  train_examples: int  # the training split less the validation hold-out
  validation_examples: int
  num_classes: int
  batch_size: int
  microbatch_size: int  # of one accumulation step (batch_size when 0 in the config)
  noise_scale_split: bool
  num_devices: int  # the devices the layouts are for
  # (batch, microbatches, padded microbatch) of every batch the run may take.
  layouts: Tuple[Tuple[int, int, int], ...]
  steps_per_epoch: int  # updates of batch_size in one epoch of train_examples
  num_epochs: float  # the config's; what a changing-batch run lasts
  num_train_steps: int  # the run's length in updates (a changing batch: a guess)
  length_from: str  # "num_epochs" or "num_train_steps": which field set it
  examples: int  # examples the run trains on
  peak_learning_rate: float  # the base LR after the scaling rule, at batch_size
  batch_schedule: Dict[str, Any]  # the section, its defaults filled in
  batch_limits: Tuple[int, int]  # a noise_scale batch's bounds; else (batch, batch)
  adversarial: Optional[Dict[str, Any]]  # loss.adversarial filled in; None when off
  # metric, value, every (updates between its evaluations, 0 resolved); None: absent
  stop_at_target: Optional[Dict[str, Any]]
  gradient_penalty: Optional[Dict[str, Any]] = None  # loss.gradient_penalty filled; None: off

  def to_dict(self) -> Dict[str, Any]:
    """The facts as JSON values (tuples as lists): what facts.json holds."""
    return json.loads(json.dumps(dataclasses.asdict(self)))

  def layout(self, batch: int) -> Tuple[int, int]:
    """(microbatches, padded microbatch) of one of the run's batches."""
    return next((n, size) for b, n, size in self.layouts if b == batch)

  def length_note(self) -> Optional[str]:
    """One line when num_train_steps overrides num_epochs, else None."""
    if self.length_from != "num_train_steps":
      return None
    return (f"lbt: the run lasts num_train_steps={self.num_train_steps} updates "
            f"({self.num_train_steps / self.steps_per_epoch:.3g} epochs); "
            f"num_epochs={self.num_epochs:g} is not used")


def validate(config: ml_collections.ConfigDict, *, num_devices: int) -> RunFacts:
  """Checks a whole run config against itself, the dataset and the machine,
  and returns what it derived.

  Raises:
    ConfigError naming the first bad field.
  """
  # Imported here: the registries import jax/flax, which config files (they
  # import this module) should not pull in before the command line is parsed.
  from lbt.engine import adversarial, regularizers
  from lbt import data, optim
  _check_layout(config)
  spec = _check_dataset(config, data)
  _check_sizes(config)
  train_examples = num_train_examples(config, spec)
  micro, split, limits, layouts = _check_batches(config, train_examples, num_devices)
  _check_model(config, spec, micro, layouts)
  adversarial_section = _check_loss(config, adversarial)
  penalty = _check_penalty(config, regularizers, layouts, adversarial_section)
  optim.check(config.optimizer)
  _check_optimizer_needs(config, optim, micro, split, layouts)
  steps_per_epoch = updates_per_epoch(train_examples, config.batch_size)
  updates, length_from = _check_length(config, optim, steps_per_epoch)
  schedule = batch_schedule.section(config)
  constant = schedule["name"] == "constant"
  return RunFacts(
      train_examples=train_examples,
      validation_examples=dataset_field(config, "validation_examples"),
      num_classes=spec.num_classes, batch_size=config.batch_size, microbatch_size=micro,
      noise_scale_split=split, num_devices=num_devices,
      layouts=tuple((b, n, size) for b, (n, size) in sorted(layouts.items())),
      steps_per_epoch=steps_per_epoch, num_epochs=float(config.num_epochs),
      num_train_steps=updates, length_from=length_from,
      examples=(updates * config.batch_size if constant
                else int(config.num_epochs * train_examples)),
      peak_learning_rate=optim.effective_learning_rate(config.optimizer, config.batch_size),
      batch_schedule=schedule, batch_limits=limits,
      adversarial=(adversarial_section if adversarial_section
                   and adversarial_section["enabled"] else None),
      stop_at_target=_check_target(config, updates), gradient_penalty=penalty)


def _check_layout(config) -> None:
  """Which sections and keys exist: anything else in a config is a typo."""
  for key in config.keys():
    _require(key in TOP_LEVEL_FIELDS + tuple(OPTIONAL_FIELDS), key, config[key],
             "not a field lbt reads; the fields are: "
             f"{', '.join(TOP_LEVEL_FIELDS + tuple(OPTIONAL_FIELDS))}")
  for field in TOP_LEVEL_FIELDS:
    _require(field in config, field, None, "a section of the config (ConfigDict)"
             if field in REQUIRED_SECTIONS else "a field every config must have")
  for section in REQUIRED_SECTIONS:
    _require(isinstance(config[section], ml_collections.ConfigDict),
             section, config.get(section), "a section of the config (ConfigDict)")
  for section, fields in SECTION_FIELDS.items():
    for key in config[section].keys():
      _require(key in fields, f"{section}.{key}", config[section][key],
               f"not a field lbt reads; {section} has: {', '.join(fields)}")


def _check_dataset(config, data):
  """The dataset section; returns the dataset's spec."""
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
  _require(isinstance(dataset_field(config, "shuffle"), bool), "dataset.shuffle",
           dataset_field(config, "shuffle"), "True (a new order each epoch) or False (none)")
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
  return spec


def _check_sizes(config) -> None:
  for field in ("batch_size", "eval_batch_size", "checkpoint_keep"):
    _integer(field, config[field], 1)
  for field in ("seed", "microbatch_size", "num_train_steps", "eval_every_steps",
                "checkpoint_every_steps", "log_every_steps"):
    _integer(field, config[field], 0)
  _require(isinstance(config.num_epochs, (int, float)) and config.num_epochs > 0
           and math.isfinite(config.num_epochs),
           "num_epochs", config.num_epochs, "a positive number (finite)")


def _check_batches(config, train_examples: int, num_devices: int):
  """The batch, microbatch and schedule; returns (microbatch, split, a
  noise_scale batch's bounds, layouts)."""
  batch, held_out = config.batch_size, dataset_field(config, "validation_examples")
  _require(batch <= train_examples, "batch_size", batch,
           f"at most the training set of {config.dataset.name} ({train_examples} "
           f"examples{f' after {held_out} held out for validation' if held_out else ''})")
  micro = config.microbatch_size or batch
  _require(micro <= batch, "microbatch_size", micro,
           f"at most batch_size ({batch}); 0 means no accumulation")
  split = config.get("noise_scale_split", OPTIONAL_FIELDS["noise_scale_split"])
  _require(isinstance(split, bool), "noise_scale_split", split,
           "True (a batch of one microbatch runs as two halves, for the gradient "
           "noise scale) or False")
  batch_schedule.check(config, train_examples=train_examples,
                       microbatch=config.microbatch_size, split=split)
  schedule = batch_schedule.section(config)
  limits = (batch_schedule.limits(schedule, batch, micro, train_examples)
            if schedule["name"] == "noise_scale" else (batch, batch))
  # A batch or microbatch that does not divide is padded (microbatch_layout).
  layouts = {b: slots.microbatch_layout(b, micro, num_devices, split)
             for b in scheduled_batches(config, micro, limits)}
  _require(config.eval_batch_size % num_devices == 0, "eval_batch_size",
           config.eval_batch_size, f"a multiple of the device count ({num_devices})")
  return micro, split, limits, layouts


def _check_model(config, spec, micro: int, layouts) -> None:
  """The model's name and dtype here; the options' names from the factory's
  signature; their values, and bn.ghost_size's range, by models.create."""
  from lbt import models  # pylint: disable=import-outside-toplevel
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


def _check_loss(config, adversarial) -> Optional[Dict[str, Any]]:
  """The loss section; returns loss.adversarial with its defaults, if present."""
  smoothing = config.loss.label_smoothing
  _require(isinstance(smoothing, (int, float)) and 0 <= smoothing < 1,
           "loss.label_smoothing", smoothing, "a number in [0, 1)")
  if "adversarial" not in config.loss:  # Absent: no adversarial loss.
    return None
  _require(isinstance(config.loss.adversarial, ml_collections.ConfigDict),
           "loss.adversarial", config.loss.adversarial, "a section (ConfigDict)")
  return adversarial.check(config.loss.adversarial)


def _check_penalty(config, regularizers, layouts, adversarial) -> Optional[Dict[str, Any]]:
  """loss.gradient_penalty, by its owner `regularizers.check`; None when absent or off."""
  section = config.loss.get("gradient_penalty")
  _require(section is None or isinstance(section, ml_collections.ConfigDict),
           "loss.gradient_penalty", section, "a section (ConfigDict)")
  return None if section is None else regularizers.check(
      section, ghost_size=config.bn.ghost_size, microbatches=dict(
          (b, padded) for b, (_, padded) in layouts.items()),
      adversarial=bool(adversarial and adversarial["enabled"]))


def _check_optimizer_needs(config, optim, micro: int, split: bool, layouts) -> None:
  """The microbatch against what the optimizer needs (GSNR: >= 2 microbatches)."""
  if "num_microbatches" not in optim.needs(config.optimizer):
    return
  smallest = min(layouts)
  enough = all(n >= 2 and (split or b // micro >= 2) for b, (n, _) in layouts.items())
  _require(enough, "microbatch_size", config.microbatch_size,
           f"at most batch_size / 2 ({smallest // 2}) and a divisor of it: "
           f"{config.optimizer.name} estimates the gradient variance from >= 2 "
           "microbatch gradients (GSNR, Jiang et al. 2023)")


def _check_target(config, updates: int) -> Optional[Dict[str, Any]]:
  """stop_at_target: a metric of the validation split, a value, an interval;
  returns the section filled in, `every` 0 resolved to about 500 evaluations
  over the run's `updates` (every update when it has at most 500)."""
  given = config.get("stop_at_target")
  if given is None:
    return None
  target = {**TARGET_DEFAULTS,
            **(given.to_dict() if hasattr(given, "to_dict") else dict(given))}
  for key in target:
    _require(key in TARGET_FIELDS, f"stop_at_target.{key}", target[key],
             f"not a field lbt reads; stop_at_target has: {', '.join(TARGET_FIELDS)}")
  _require(target["metric"] in TARGET_METRICS, "stop_at_target.metric", target["metric"],
           f"one of {', '.join(TARGET_METRICS)} (the test set never stops a run)")
  value = target.get("value")
  accuracy = target["metric"] == "validation_accuracy"
  _require(isinstance(value, (int, float)) and not isinstance(value, bool)
           and math.isfinite(value) and (0 < value <= 1 if accuracy else value > 0),
           "stop_at_target.value", value,
           "an accuracy in (0, 1]" if accuracy else "a loss > 0")
  _integer("stop_at_target.every", target["every"], 0)
  _require(dataset_field(config, "validation_examples") > 0, "dataset.validation_examples",
           dataset_field(config, "validation_examples"),
           "> 0 with stop_at_target: the target is measured on the validation split")
  return {**target, "every": target["every"] or max(1, -(-updates // 500))}


def _check_length(config, optim, steps_per_epoch: int) -> Tuple[int, str]:
  """The run's length in updates and the field that set it; the schedule
  (optim/schedules.py) against that length."""
  updates = num_train_steps(config, steps_per_epoch)
  field = "num_train_steps" if config.num_train_steps > 0 else "num_epochs"
  _require(updates <= MAX_UPDATES, field, config[field],
           f"at most {MAX_UPDATES} updates (the update counter is int32); this is "
           f"{updates} at {steps_per_epoch} updates per epoch")
  optim.create_schedule(config.schedule, 1.0, steps_per_epoch, updates)  # checks it
  return updates, field


def scheduled_batches(config, micro: int, limits: Tuple[int, int]) -> Tuple[int, ...]:
  """Every batch size a run may take, as far as the config fixes them (for
  noise_scale: its bounds `limits` and the multiples of the microbatch
  `micro` between)."""
  spec = batch_schedule.section(config)
  if spec["name"] == "steps":
    return tuple(sorted({config.batch_size, *spec["batch_sizes"]}))
  if spec["name"] == "noise_scale":
    low, high = limits
    return tuple(sorted({config.batch_size, low, high,
                         *range(micro * max(1, -(-low // micro)), high, micro)}))
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
