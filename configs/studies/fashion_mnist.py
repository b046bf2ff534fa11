"""The default Fashion-MNIST batch-size study, every compared number tuned.

  python -m lbt.study --study=configs/studies/fashion_mnist.py --workdir=studies/fashion_mnist
  python -m lbt.study --study=configs/studies/fashion_mnist.py:quick --workdir=studies/quick
  python -m lbt.study --study=configs/studies/fashion_mnist.py:full --workdir=studies/full
  python -m lbt.study --study=configs/studies/fashion_mnist.py:untuned --workdir=studies/rule

Model: the MLP of `configs/fashion_mnist.py` with two hidden layers of 128
(Hoffer et al.'s F1 family, narrowed): on a 2-core CPU an epoch costs about
2 s at any batch. Every run holds out VALIDATION_EXAMPLES of the 60,000
training images: the validation split chooses, the test set only reports, and
the full batch is the 50,000 left.

Every cell whose number the report compares is searched
(`lbt.studies.cell_search`): its base learning rate on a power-of-two grid
around the best of its neighbouring cell, extended until bracketed and two
doublings past the best on each side, refined once to √2 steps, the same rule
and the same trial cap for every optimizer; every cell ends with three runs
(seeds) at its chosen rate, and a cell of 20 updates or fewer runs every rate
it tries with three seeds and scores their mean. The cells (each a
`lbt.studies.points.Point` whose role names its section):

- the sweep: momentum, Nesterov, LARS, LAMB and Adam at TUNED_BATCHES for
  EPOCHS epochs (cosine decay, warmup WARMUP_EPOCHS): equal epochs, so the
  larger the batch the fewer the updates; each batch's search starts from the
  best learning rate of the previous batch;
- the recipe ladder at the full batch (TUNED_LADDER), each rung tuned from
  the previous rung's best; the rungs whose ingredient is a learning-rate rule
  (Goyal's linear rule at rung 0, square-root scaling with LEGW warmup) also
  run once at the rule's own learning rate, for how far the rule is from the
  optimum;
- Hoffer et al.'s remedies at HOFFER_BATCH against B0 = SMALL_BATCH, each tuned;
- the gradient noise scale over training (one point, `noise_scale_split`);
- the critical batch: the steps-to-target protocol of `lbt.limit` for
  momentum, LARS, LAMB and Adam (LIMIT_OPTIMIZERS, as
  configs/studies/fashion_mnist_critical.py; `get_limits`, constant learning
  rate, no warmup), run into DIR/limits/<optimizer>/.

Left to `:full` for the default's time budget (seeds were kept, cells
dropped): the sweep at every power of two (32,768 among them), the ladder's
three rungs that measured ties (BN/bias exclusions, label smoothing, momentum
0.95 with weight decay), its more-epochs rung (twice the epochs: a change of
budget, not of recipe; Hoffer's regime cell asks the longer-training question
at 2,048) and its 15 epochs, Nesterov's steps-to-target protocol, and the
batch-size schedules at equal examples.

`:quick` is the same machinery on fewer cells (a few minutes), `:full` all of
the above (several times the default), `:untuned` the
study as it was before the searches: every point at its scaling rule's
learning rate.
"""


import dataclasses
from typing import Dict

import ml_collections

from configs import fashion_mnist
from lbt.data import catalog
from lbt.engine import config as config_lib
from lbt.errors import ConfigError
from lbt.studies import cell_search, limit_protocol
from lbt.studies import points as points_lib

OPTIMIZERS = ("momentum", "lars", "lamb", "adam")
TRAIN_SPLIT = catalog.DATASETS.get("fashion_mnist").num_train_examples  # 60,000 images
BATCHES = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, TRAIN_SPLIT)
HIDDEN = (128, 128)
EPOCHS = 3.0
TUNED_BATCH, TUNED_FACTORS, VALIDATION_EXAMPLES = 16384, (0.5, 1.0, 2.0), 10000
SMALL_BATCH, HOFFER_BATCH = 128, 2048
LADDER_BATCH, LADDER_EPOCHS = TRAIN_SPLIT, 15.0
NOISE_BATCH = 128
SCHEDULE_BATCH, SCHEDULE_MICROBATCH, SCHEDULE_EPOCHS = 256, 128, 6.0
BATCH_SCHEDULES = {
    "constant": dict(name="constant"),
    "steps": dict(name="steps", epochs=[2.0, 4.0], batch_sizes=[1024, 4096]),
    "noise": dict(name="noise_scale", factor=1.0, min_batch=256, max_batch=8192, every=20),
}
SCHEDULE_EVALUATION_EVERY = 25  # updates; the runs differ in their update counts.
EVALUATIONS = 10  # per run, for the updates-to-target columns and the curves.
# The test accuracy the updates-to-target columns count to (lbt.study reads
# it): what the study's MLP reaches at small batches in about two epochs.
TARGET_ACCURACY = 0.85
# The validation accuracy the steps-to-target protocols (`get_limits`) train
# to: the same level, on the held-out split that chooses.
VALIDATION_TARGET = 0.85


def point(optimizer: str, batch: int, epochs: float = EPOCHS) -> ml_collections.ConfigDict:
  """One point of the sweep: `configs/fashion_mnist.py` with the study's MLP."""
  config = fashion_mnist.get_config(f"{optimizer},batch={batch},epochs={epochs},model=mlp")
  config.model.hidden_sizes = HIDDEN
  config.eval_batch_size = 5000
  _evaluate_often(config)
  return config


def _evaluate_often(config) -> None:
  """EVALUATIONS evaluations over the run (its length from RunFacts)."""
  updates = config_lib.validate(config, num_devices=1).num_train_steps
  config.eval_every_steps = max(1, updates // EVALUATIONS)


def _log_every_update(points: Dict[str, points_lib.Point]) -> None:
  """The report's diffusion section fits ‖w_t − w_0‖ over every update of the
  momentum sweep (untuned) and Hoffer et al.'s points: those write their full
  diagnostics at every update (the others only every `log_every_steps`)."""
  for config, role, _ in points.values():
    sweep = role["section"] == "sweep" and "learning_rate" not in role
    if role["optimizer"] == "momentum" and (sweep or role["section"] == "hoffer"):
      config.log_every_steps = 1


def sweep(optimizers, batches, epochs: float = EPOCHS) -> Dict[str, points_lib.Point]:
  """The batch sweep: one untuned point per optimizer and batch, each its own cell."""
  return {f"{o}-b{b}": points_lib.point(point(o, b, epochs), "sweep", cell=f"{o}-b{b}")
          for o in optimizers for b in batches}


def _copy(config) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(config.to_dict())


def tuned_grid(optimizer: str, batch: int, factors=TUNED_FACTORS) -> Dict[str, points_lib.Point]:
  """Base learning rates around the default, trained on 50,000 examples and
  compared on the 10,000 held out: the trials of one tuned cell."""
  base = point(optimizer, batch)
  cell, grid = f"{optimizer}-b{batch}-tuned", {}
  for factor in factors:
    config = _copy(base)
    config.dataset.validation_examples = VALIDATION_EXAMPLES
    config.optimizer.learning_rate = base.optimizer.learning_rate * factor
    _evaluate_often(config)
    grid[f"{cell}-lr{config.optimizer.learning_rate:g}"] = points_lib.point(
        config, "sweep", cell=cell, learning_rate=config.optimizer.learning_rate)
  return grid


# The recipe ladder (You et al. 2020, §3): each step
# changes the previous step's config by one ingredient.
def _lars(config):
  keep = {k: config.optimizer[k] for k in ("learning_rate", "scaling", "base_batch_size")}
  section = fashion_mnist.optimizer_point("lars").to_dict()
  section.update(keep, exclude=())  # Decay and trust ratio on every tensor.
  config.optimizer = ml_collections.ConfigDict(section)


def _exclusions(config):
  del config.optimizer["exclude"]  # The default: no decay or trust ratio on BN and biases.


def _poly(config):
  config.schedule = dict(name="poly", warmup_epochs=config.schedule.warmup_epochs,
                         end_learning_rate=0.0, power=2.0)


def _longer_warmup(config):
  config.schedule.warmup_epochs = round(0.28 * config.num_epochs)  # MLPerf: 18 of 64 epochs.


def _sqrt_legw(config):
  config.optimizer.update(learning_rate=fashion_mnist.optimizer_point("lars").learning_rate,
                          scaling="sqrt")
  config.schedule.warmup_epochs = round(min(10 * config.batch_size / 32768,
                                            0.4 * config.num_epochs))


def _label_smoothing(config):
  config.loss.label_smoothing = 0.1


def _momentum_and_decay(config):
  config.optimizer.update(momentum=0.95, weight_decay=1e-4)  # MLPerf at >= 64K.


def _more_epochs(config):
  config.num_epochs *= 2
  _evaluate_often(config)


LADDER = (_lars, _exclusions, _poly, _longer_warmup, _sqrt_legw, _label_smoothing,
          _momentum_and_decay, _more_epochs)


def ladder(batch: int = LADDER_BATCH, epochs: float = LADDER_EPOCHS, changes=LADDER):
  """Step 0 is Goyal et al.: momentum, linear scaling, warmup 5/90 and x0.1
  steps at 30/60/80 of 90 epochs, scaled to the run."""
  config = point("momentum", batch, epochs)
  config.schedule = dict(name="multistep", warmup_epochs=round(epochs * 5 / 90),
                         decay_epochs=[round(epochs * f, 3) for f in (1 / 3, 2 / 3, 8 / 9)],
                         decay_factor=0.1)
  rungs = [("baseline", config)]
  for change in changes:
    config = _copy(config)
    change(config)
    rungs.append((change.__name__.lstrip("_"), config))
  points = {}
  for k, (change, config) in enumerate(rungs):
    cell = f"{config.optimizer.name}-b{batch}-recipe{k}"
    points[cell] = points_lib.point(config, "ladder", cell=cell, rung=k, change=change)
  return points


def hoffer(batch: int = HOFFER_BATCH, small: int = SMALL_BATCH, epochs: float = EPOCHS):
  """Hoffer et al.'s remedies added in turn to momentum at `batch`: the LR of
  the small batch scaled by sqrt(batch/small), ghost BN over `small`
  examples, then regime adaptation (batch/small times the epochs and warmup)."""
  sqrt = point("momentum", batch, epochs)
  sqrt.optimizer.update(learning_rate=sqrt.optimizer.learning_rate * small
                        / sqrt.optimizer.base_batch_size, base_batch_size=small, scaling="sqrt")
  gbn = _copy(sqrt)
  gbn.bn.ghost_size = small
  regime = _copy(gbn)
  regime.num_epochs = epochs * batch / small
  regime.schedule.warmup_epochs *= batch / small
  _evaluate_often(regime)
  points = {}
  for variant, config in (("sqrt", sqrt), ("sqrt-gbn", gbn), ("regime", regime)):
    cell = f"momentum-b{batch}-{variant}"
    points[cell] = points_lib.point(config, "hoffer", cell=cell, variant=variant)
  return points


def noise_scale(batch: int = NOISE_BATCH, epochs: float = EPOCHS):
  config = point("momentum", batch, epochs)
  config.noise_scale_split = True
  cell = f"momentum-b{batch}-noise"
  return {cell: points_lib.point(config, "noise", cell=cell)}


def batch_schedules(batch: int = SCHEDULE_BATCH, epochs: float = SCHEDULE_EPOCHS):
  """One momentum run per schedule of BATCH_SCHEDULES, equal in examples."""
  points = {}
  for name, schedule in BATCH_SCHEDULES.items():
    config = point("momentum", batch, epochs)
    config.microbatch_size = SCHEDULE_MICROBATCH
    config.batch_schedule = schedule
    config.eval_every_steps = SCHEDULE_EVALUATION_EVERY
    cell = f"momentum-b{batch}-batch-{name}"
    points[cell] = points_lib.point(config, "schedule", cell=cell, schedule=name)
  return points


# ---- the tuned study ----

TUNED_OPTIMIZERS = ("momentum", "nesterov", "lars", "lamb", "adam")
FULL_BATCH = TRAIN_SPLIT - VALIDATION_EXAMPLES  # the whole training split after the hold-out
# x4 steps to 8,192, then the whole split (`:full`: every x2). 32,768 trains the
# same 3 updates as the full batch and is left to `:full` for the budget.
TUNED_BATCHES = (128, 512, 2048, 8192, FULL_BATCH)
ALL_BATCHES = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, FULL_BATCH)
TUNED_LADDER_EPOCHS = 10.0
# Every optimizer's cell gets the same search: up to 7 learning rates (the
# first three, two doublings past the best on each side, the √2 steps around
# it), three runs at the chosen rate, and, where a cell trains 20 updates or
# fewer, three seeds at every rate, scored by their mean
# (`lbt.studies.cell_search.Search`'s defaults).
SEARCH = cell_search.Search(max_trials=7, refine=True)
# The ladder's rungs and Hoffer's remedies: five rates each, no √2 step.
SHORT_SEARCH = cell_search.Search(max_trials=5, refine=False)
# The steps-to-target protocol of every optimizer (as
# configs/studies/fashion_mnist_critical.py): constant LR, no warmup.
LIMIT_START_BATCH, LIMIT_BUDGET_EPOCHS, LIMIT_BUDGET_UPDATES = 128, 10.0, 300
# The default's protocols (`:full`: every tuned optimizer, Nesterov too).
LIMIT_OPTIMIZERS = ("momentum", "lars", "lamb", "adam")


def tuned_point(optimizer: str, batch: int, epochs: float = EPOCHS) -> ml_collections.ConfigDict:
  """A sweep point trained on the 50,000 and scored on the 10,000 held out."""
  config = point(optimizer, batch, epochs)
  config.dataset.validation_examples = VALIDATION_EXAMPLES
  _evaluate_often(config)
  return config


def searched(config, section: str, cell: str, *, anchor=None, search=SEARCH,
             **fields) -> points_lib.Point:
  """A cell whose base learning rate is searched (the config's is the guess
  when there is no anchor)."""
  return points_lib.point(config, section, cell=cell,
                          search=dataclasses.replace(search, anchor=anchor), **fields)


def tuned_sweep(optimizers, batches, epochs: float = EPOCHS, search=SEARCH):
  """Every optimizer at every batch, each batch's search anchored on the
  previous batch's best."""
  points = {}
  for o in optimizers:
    previous = None
    for b in batches:
      cell = f"{o}-b{b}"
      points[cell] = searched(tuned_point(o, b, epochs), "sweep", cell, anchor=previous,
                              search=search)
      previous = cell
  return points


# The default study's ladder: the ingredients whose rung measured a tie when
# last tuned (BN/bias exclusions -0.06, label smoothing +0.06, momentum 0.95
# with weight decay -0.35 points) are left to `:full`, for the budget.
TUNED_LADDER = (_lars, _poly, _longer_warmup, _sqrt_legw)


def tuned_ladder(batch: int = FULL_BATCH, epochs: float = TUNED_LADDER_EPOCHS,
                 changes=TUNED_LADDER, search=SHORT_SEARCH):
  """Each rung searched from the previous rung's best; the rungs whose
  ingredient is a learning-rate rule also run at the rule's own LR."""
  points = {}
  previous = None
  for cell, point_ in ladder(batch, epochs, changes).items():
    config, role, _ = point_
    config.dataset.validation_examples = VALIDATION_EXAMPLES
    _evaluate_often(config)
    fields = {k: role[k] for k in ("rung", "change")}
    points[cell] = searched(config, "ladder", cell, anchor=previous, search=search, **fields)
    if role["change"] in LR_RULES:
      points[f"{cell}-rule"] = points_lib.point(
          _copy(config), "ladder", cell=f"{cell}/rule", rule=LR_RULES[role["change"]], **fields)
    previous = cell
  return points


LR_RULES = {"baseline": "linear (Goyal et al.)", "sqrt_legw": "square root with LEGW warmup"}


def tuned_hoffer(batch: int = HOFFER_BATCH, small: int = SMALL_BATCH, epochs: float = EPOCHS):
  """Hoffer et al.'s remedies, each tuned (the sqrt rule is then only the guess)."""
  points = {}
  for cell, (config, role, _) in hoffer(batch, small, epochs).items():
    config.dataset.validation_examples = VALIDATION_EXAMPLES
    _evaluate_often(config)
    points[cell] = searched(config, "hoffer", cell, search=SHORT_SEARCH,
                            variant=role["variant"])
  return points


def tuned_schedules(batch: int = SCHEDULE_BATCH, epochs: float = SCHEDULE_EPOCHS):
  points = {}
  for cell, (config, role, _) in batch_schedules(batch, epochs).items():
    config.dataset.validation_examples = VALIDATION_EXAMPLES
    points[cell] = searched(config, "schedule", cell, search=SHORT_SEARCH,
                            schedule=role["schedule"])
  return points


def limit_config(optimizer: str, batch: int = LIMIT_START_BATCH) -> ml_collections.ConfigDict:
  """The base config of one optimizer's steps-to-target protocol."""
  config = fashion_mnist.get_config(f"{optimizer},batch={batch},model=mlp")
  config.model.hidden_sizes = HIDDEN
  config.dataset.validation_examples = VALIDATION_EXAMPLES
  config.eval_batch_size = 5000
  config.schedule = ml_collections.ConfigDict({"name": "constant", "warmup_epochs": 0.0})
  return config


def get_limits(arg: str = None) -> Dict[str, limit_protocol.Protocol]:
  """The steps-to-target protocols `lbt.study` runs into DIR/limits/<label>/."""
  if arg == "untuned":
    return {}
  if arg == "quick":  # a smoke run of the machinery: one optimizer, fewer batches
    return {"momentum": limit_protocol.Protocol(limit_config("momentum", 1024), 0.8, 2.0, 40,
                                                max_batch=8192)}
  optimizers = TUNED_OPTIMIZERS if arg == "full" else LIMIT_OPTIMIZERS
  return {o: limit_protocol.Protocol(limit_config(o), VALIDATION_TARGET, LIMIT_BUDGET_EPOCHS,
                                     LIMIT_BUDGET_UPDATES) for o in optimizers}


def get_study(arg: str = None) -> Dict[str, points_lib.Point]:
  if arg not in (None, "", "quick", "full", "untuned"):
    raise ConfigError("--study argument", arg, "none (the default, tuned study), 'quick', "
                      "'full' (every batch) or 'untuned' (every point at its rule's LR)")
  if arg == "untuned":
    return untuned_study()
  if arg == "quick":
    quick = cell_search.Search(max_trials=4, refine=False)
    points = tuned_sweep(("momentum", "lars"), (512, 4096), 2.0, search=quick)
    points.update(tuned_ladder(epochs=4.0, changes=LADDER[:1], search=quick))
    _log_every_update(points)
    return points
  if arg == "full":
    points = tuned_sweep(TUNED_OPTIMIZERS, ALL_BATCHES)
    points.update(tuned_ladder(epochs=LADDER_EPOCHS, changes=LADDER))
    points.update(tuned_hoffer())
    points.update(noise_scale())
    points.update(tuned_schedules())
  else:
    points = tuned_sweep(TUNED_OPTIMIZERS, TUNED_BATCHES)
    points.update(tuned_ladder())
    points.update(tuned_hoffer())
    points.update(noise_scale())
  _log_every_update(points)
  return points


def untuned_study() -> Dict[str, points_lib.Point]:
  """The study before its searches: every point at its scaling rule's LR
  (a ×0.5/×1/×2 grid at TUNED_BATCH for momentum and LARS only)."""
  points = sweep(OPTIMIZERS, BATCHES)
  for optimizer in ("momentum", "lars"):
    points.update(tuned_grid(optimizer, TUNED_BATCH))
  points.update(ladder())
  points.update(hoffer())
  points.update(noise_scale())
  points.update(batch_schedules())
  _log_every_update(points)
  return points
