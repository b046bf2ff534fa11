"""The default Fashion-MNIST batch-size study: every batch from 128 to the full 60,000.

  python -m lbt.study --study=configs/studies/fashion_mnist.py --workdir=studies/fashion_mnist
  python -m lbt.study --study=configs/studies/fashion_mnist.py:quick --workdir=studies/quick

Model: the MLP of `configs/fashion_mnist.py` with two hidden layers of 128
(Hoffer et al.'s F1 family, narrowed): on a 2-core CPU an epoch costs about 2 s
at any batch, against ~5 s for 512 units and ~25 s for LeNet-5, and the whole
study has to fit in 20 minutes. Points (names `<optimizer>-b<batch>[-variant]`):

- the batch sweep: momentum (Goyal's baseline, linear scaling), LARS, LAMB and
  Adam (sqrt scaling) at every power of two from 128 to 32,768 and at 60,000,
  for EPOCHS epochs each (cosine decay, 1 warmup epoch): equal epochs, so the
  larger the batch the fewer the updates, as in the paper;
- a learning-rate grid (×0.5, ×1, ×2 of the base LR) for momentum and LARS at
  B = TUNED_BATCH, chosen by the report on a 10,000-example validation split
  held out from the training set (`-tuned-lr<base lr>`); every other point
  uses its optimizer's scaling rule untuned;
- the recipe ladder at 60,000 (`-recipe<k>`, see LADDER), for LADDER_EPOCHS;
- Hoffer et al.'s test at HOFFER_BATCH against B0 = 128 (`-sqrt`, `-sqrt-gbn`,
  `-regime`): the largest batch whose regime adaptation (HOFFER_BATCH/128 times
  the epochs, the schedule stretched the same way) fits the 20-minute budget;
- the gradient noise scale over training (`momentum-b128-noise`): the sweep's
  smallest momentum point with `noise_scale_split`, whose two halves of each
  batch give B_simple (McCandlish et al. 2018); BatchNorm then normalizes over
  64 examples, so it is a point of its own, not the sweep's;
- batch-size schedules at equal examples (`-batch-constant`, `-batch-steps`,
  `-batch-noise`): momentum from B = SCHEDULE_BATCH for SCHEDULE_EPOCHS with one
  cosine LR schedule in epochs, the batch constant, grown ×4 at fixed epochs
  (Smith et al. 2018), or following B_simple (`noise_scale`), each with
  microbatches of SCHEDULE_MICROBATCH.

`:quick` is a subset that runs in under 3 minutes.
"""

from typing import Dict

import ml_collections

from configs import fashion_mnist
from lbt.errors import ConfigError

OPTIMIZERS = ("momentum", "lars", "lamb", "adam")
BATCHES = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 60000)
HIDDEN = (128, 128)
EPOCHS = 3.0
TUNED_BATCH, TUNED_FACTORS, VALIDATION_EXAMPLES = 16384, (0.5, 1.0, 2.0), 10000
SMALL_BATCH, HOFFER_BATCH = 128, 2048
LADDER_BATCH, LADDER_EPOCHS = 60000, 15.0
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


def point(optimizer: str, batch: int, epochs: float = EPOCHS) -> ml_collections.ConfigDict:
  """One point of the sweep: `configs/fashion_mnist.py` with the study's MLP."""
  config = fashion_mnist.get_config(f"{optimizer},batch={batch},epochs={epochs},model=mlp")
  config.model.hidden_sizes = HIDDEN
  config.eval_batch_size = 5000
  _evaluate_often(config)
  return config


def _evaluate_often(config) -> None:
  examples = 60000 - config.dataset.get("validation_examples", 0)
  updates = int(config.num_epochs * (examples // config.batch_size))
  config.eval_every_steps = max(1, updates // EVALUATIONS)


def _log_every_update(points: Dict[str, ml_collections.ConfigDict]) -> None:
  """The report's diffusion section fits ‖w_t − w_0‖ over every update of the
  momentum sweep and Hoffer et al.'s points: those write their full
  diagnostics at every update (the others only every `log_every_steps`)."""
  for name, config in points.items():
    if name.startswith("momentum-") and ("-" not in name[len("momentum-"):]
                                         or name.endswith(("-sqrt", "-sqrt-gbn", "-regime"))):
      config.log_every_steps = 1


def _copy(config) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(config.to_dict())


def tuned_grid(optimizer: str, batch: int, factors=TUNED_FACTORS) -> Dict[str, ml_collections.ConfigDict]:
  """Base learning rates around the default, trained on 50,000 examples and
  compared on the 10,000 held out."""
  base = point(optimizer, batch)
  grid = {}
  for factor in factors:
    config = _copy(base)
    config.dataset.validation_examples = VALIDATION_EXAMPLES
    config.optimizer.learning_rate = base.optimizer.learning_rate * factor
    _evaluate_often(config)
    grid[f"{optimizer}-b{batch}-tuned-lr{config.optimizer.learning_rate:g}"] = config
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


def ladder(batch: int = LADDER_BATCH, epochs: float = LADDER_EPOCHS, steps: int = len(LADDER)):
  """Step 0 is Goyal et al.: momentum, linear scaling, warmup 5/90 and x0.1
  steps at 30/60/80 of 90 epochs, scaled to the run."""
  config = point("momentum", batch, epochs)
  config.schedule = dict(name="multistep", warmup_epochs=round(epochs * 5 / 90),
                         decay_epochs=[round(epochs * f, 3) for f in (1 / 3, 2 / 3, 8 / 9)],
                         decay_factor=0.1)
  points = {f"momentum-b{batch}-recipe0": config}
  for k, change in enumerate(LADDER[:steps], start=1):
    config = _copy(config)
    change(config)
    points[f"{config.optimizer.name}-b{batch}-recipe{k}"] = config
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
  return {f"momentum-b{batch}-sqrt": sqrt, f"momentum-b{batch}-sqrt-gbn": gbn,
          f"momentum-b{batch}-regime": regime}


def noise_scale(batch: int = NOISE_BATCH, epochs: float = EPOCHS):
  config = point("momentum", batch, epochs)
  config.noise_scale_split = True
  return {f"momentum-b{batch}-noise": config}


def batch_schedules(batch: int = SCHEDULE_BATCH, epochs: float = SCHEDULE_EPOCHS):
  """One momentum run per schedule of BATCH_SCHEDULES, equal in examples."""
  points = {}
  for name, schedule in BATCH_SCHEDULES.items():
    config = point("momentum", batch, epochs)
    config.microbatch_size = SCHEDULE_MICROBATCH
    config.batch_schedule = schedule
    config.eval_every_steps = SCHEDULE_EVALUATION_EVERY
    points[f"momentum-b{batch}-batch-{name}"] = config
  return points


def get_study(arg: str = None) -> Dict[str, ml_collections.ConfigDict]:
  if arg not in (None, "", "quick"):
    raise ConfigError("--study argument", arg, "none (the default study) or 'quick'")
  if arg == "quick":
    points = {f"{o}-b{b}": point(o, b, 2.0) for o in ("momentum", "lars")
              for b in (256, 1024, 8192, 60000)}
    points.update(hoffer(batch=1024, small=256, epochs=2.0))
    points.update(ladder(epochs=5.0, steps=1))
    _log_every_update(points)
    return points
  points = {f"{o}-b{b}": point(o, b) for o in OPTIMIZERS for b in BATCHES}
  for optimizer in ("momentum", "lars"):
    points.update(tuned_grid(optimizer, TUNED_BATCH))
  points.update(ladder())
  points.update(hoffer())
  points.update(noise_scale())
  points.update(batch_schedules())
  _log_every_update(points)
  return points
