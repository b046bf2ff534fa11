"""A run's config, every field of it: its default (or REQUIRED) beside what it
is, read top to bottom like flax's `configs/default.py`. The benchmark files
(`configs/<benchmark>.py`) set the values; `lbt.engine.config.validate`
checks them and derives the run's facts. Anything not listed is a typo.
"""

from typing import Any, Dict, NamedTuple, Optional

from lbt.engine import batch_schedule

DTYPES = ("float32", "bfloat16")
# Metrics stop_at_target may watch: the validation split's, never the test set's.
TARGET_METRICS = ("validation_accuracy", "validation_loss")


class _Required:
  """The default of a field every config sets (`REQUIRED`)."""

  def __repr__(self) -> str:
    return "REQUIRED"


REQUIRED = _Required()


class Field(NamedTuple):
  """One field of a run's config: what a config that leaves it out means
  (REQUIRED: every config sets it), and what it is."""
  default: Any
  doc: str


class Section(NamedTuple):
  """A section of a run's config: what its absence means (REQUIRED: every
  config has it), what it is, and its fields, or None where the module the
  doc names owns them."""
  default: Any
  doc: str
  fields: Optional[Dict[str, Any]] = None


# Every field a run reads, what it is and its default: anything else in a
# config is a typo. A benchmark's config file (configs/<benchmark>.py) sets
# the REQUIRED ones; a field with a default may be left out (older configs
# and workdirs have none of them), and its absence means the default.
SCHEMA = {
    "seed": Field(REQUIRED, "int >= 0: the PRNG seed of the parameters' initialization, "
                            "each epoch's example order and the augmentations"),
    "dataset": Section(REQUIRED, "the data the run trains and evaluates on", {
        "name": Field(REQUIRED, "a dataset of lbt.data.DATASETS"),
        "data_dir": Field(REQUIRED, 'the TFDS data directory (or gs://); "" = $LBT_DATA_DIR, '
                                    "else ~/tensorflow_datasets"),
        "cache": Field(REQUIRED, "True: decode the split once into memory (not for the "
                                 "datasets of UNCACHEABLE); False: per example"),
        "validation_examples": Field(0, "examples held out of the training split to choose "
                                        "learning rates on: the last N of a fixed, "
                                        "seed-independent permutation; 0: none"),
        "image_size": Field(0, "side in pixels of the images the model sees; 0: the "
                               "dataset's native size"),
        "shuffle": Field(True, "True: a new order of the training pool each epoch; False: "
                               "the pool's own order in every epoch"),
    }),
    "model": Section(REQUIRED, "name (lbt.models.names()), dtype (DTYPES: the compute dtype; "
                               "parameters stay float32) and the model's own options, whose "
                               "names and defaults lbt.models.options(name) gives"),
    "batch_size": Field(REQUIRED, "int >= 1: examples of one update, over all devices (a "
                                  "changing batch's first)"),
    "microbatch_size": Field(REQUIRED, "int >= 0: examples of one accumulation step, over "
                                       "all devices; 0: the whole batch in one pass"),
    "eval_batch_size": Field(REQUIRED, "int >= 1, a multiple of the device count: examples "
                                       "of one evaluation step"),
    "num_epochs": Field(REQUIRED, "number > 0: the run's length in epochs of the training "
                                  "pool (the training split less validation_examples)"),
    "num_train_steps": Field(REQUIRED, "int >= 0: > 0 sets the run's length in updates "
                                       "instead of num_epochs"),
    "optimizer": Section(REQUIRED, "name (lbt.optim.OPTIMIZERS), learning_rate at "
                                   "base_batch_size, its scaling rule to batch_size and the "
                                   "optimizer's hyperparameters; owned by lbt.optim.check"),
    "schedule": Section(REQUIRED, "the learning-rate schedule: name, warmup_epochs and the "
                                  "schedule's own fields; owned by lbt.optim.check_schedule"),
    "loss": Section(REQUIRED, "the training loss", {
        "label_smoothing": Field(REQUIRED, "in [0, 1): the weight of the uniform "
                                           "distribution in the targets"),
        "adversarial": Section(None, "ConAdv (Liu et al. 2022), owned by "
                                     "lbt.engine.adversarial.check; absent: off"),
        "gradient_penalty": Section(None, "the penalty on the gradient's norm, owned by "
                                          "lbt.engine.regularizers.check; absent: off"),
    }),
    "bn": Section(REQUIRED, "batch normalization", {
        "ghost_size": Field(REQUIRED, "int >= 0: examples of one BN statistics batch (Hoffer "
                                      "et al.'s ghost batch); 0: each whole microbatch"),
    }),
    "log_every_steps": Field(REQUIRED, "int >= 0: updates between logs (full diagnostics, "
                                       "the buffered train lines written); 0: never"),
    "eval_every_steps": Field(REQUIRED, "int >= 0: updates between evaluations of the test "
                                        "set and the validation split; 0: at the end only"),
    "checkpoint_every_steps": Field(REQUIRED, "int >= 0: updates between checkpoints; one "
                                              "is always written at the end"),
    "checkpoint_keep": Field(REQUIRED, "int >= 1: the checkpoints kept"),
    "batch_schedule": Section(batch_schedule.DEFAULT, "how the batch changes while the run "
                                                      "trains; owned by lbt.engine.batch_schedule"),
    "noise_scale_split": Field(False, "True: a batch of one microbatch runs as two halves, so "
                                      "that the gradient noise scale is measured"),
    "stop_at_target": Section(None, "stop at the first evaluated update whose held-out metric "
                                    "reaches `value` (never the test set); absent: no target", {
        "metric": Field("validation_accuracy", "one of TARGET_METRICS"),
        "value": Field(REQUIRED, "an accuracy in (0, 1], or a loss > 0"),
        "every": Field(0, "updates between its validation evaluations; 0: about 500 over "
                          "the run"),
    }),
}


def _defaults(fields: Dict[str, Any]) -> Dict[str, Any]:
  return {k: f.default for k, f in fields.items() if f.default is not REQUIRED}


# The schema's views that validation and the workdir's resume check read.
TOP_LEVEL_FIELDS = tuple(k for k, f in SCHEMA.items() if f.default is REQUIRED)
OPTIONAL_FIELDS = _defaults(SCHEMA)
REQUIRED_SECTIONS = tuple(k for k in TOP_LEVEL_FIELDS if isinstance(SCHEMA[k], Section))
SECTION_FIELDS = {k: tuple(SCHEMA[k].fields) for k in REQUIRED_SECTIONS if SCHEMA[k].fields}
DATASET_DEFAULTS = _defaults(SCHEMA["dataset"].fields)
TARGET_FIELDS = tuple(SCHEMA["stop_at_target"].fields)
TARGET_DEFAULTS = _defaults(SCHEMA["stop_at_target"].fields)
