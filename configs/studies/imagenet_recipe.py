"""The recipe ladder at one huge batch: Goyal's baseline plus one change per step.

  python -m lbt.study --study=configs/studies/imagenet_recipe.py:lars,batch=819200,tpu=v4,chips=512 \\
    --workdir=gs://BUCKET/imagenet_recipe

The paper's recipe gains 18% top-1 over its baseline at the huge batch, but its
steps are not retrieved (You et al. 2020, §3). This study is an INFERENCE from
that section: step k adds ingredient k to step k-1, so the gain of each ingredient is the
difference of two neighbouring points. Each point's role is its rung k and
the ingredient it adds (`lbt.studies.points`); points are labelled
`<optimizer>-b<batch>-recipe<k>` (step 0 uses momentum, steps 1-8 LARS: the
paper names LARS or LAMB for step 1, and steps 4, 7 and 8 take MLPerf's LARS
table). The argument
picks `batch` and the machine (`tpu`, `chips`, `mem_gib`).

  0 Goyal et al.: momentum 0.9, lr 0.1 x B/256, 5 warmup epochs, x0.1 at
    30/60/80 of 90 epochs, weight decay 1e-4 (none on BN and biases).
  1 LARS (trust coefficient 0.001) instead of momentum, with decay and trust
    ratio on every tensor (optax's defaults), otherwise unchanged.
  2 BN parameters and biases excluded from decay and trust ratio.
  3 polynomial decay (power 2, to 1e-4) instead of the steps.
  4 longer warmup: MLPerf's warmup epochs for the batch (5/5/18/33).
  5 sqrt LR scaling with LEGW: lr = 2^1.5 x sqrt(B/256) (the LARS-ImageNet
    table of You's lab: 2^2 at 512, x sqrt 2 per doubling; 160 at 819,200), and
    warmup 10 epochs x B/32K, capped at 40% of the run.
  6 label smoothing 0.1.
  7 MLPerf's momentum and weight decay for the batch.
  8 MLPerf's epoch budget for the batch (56/56/64/92).
"""

from typing import Callable, Dict, List

import ml_collections

from configs import imagenet_resnet50
from lbt import optim
from lbt.engine.config import parse_point
from lbt.studies import points as points_lib

# LARS-ImageNet-PyTorch README: base LR 2^2 at B = 512 under sqrt scaling,
# i.e. 2^1.5 at B0 = 256; warmup 10/2^6 epochs at 512, i.e. 10 epochs at 32K.
SQRT_BASE_LR = 2 ** 1.5
LEGW_EPOCHS_AT_32K = 10.0


def _lars(config) -> None:
  """Step 1: LARS with Goyal's LR rule, decay and trust ratio on every tensor."""
  keep = {k: config.optimizer[k] for k in ("learning_rate", "scaling", "base_batch_size")}
  section = dict(name="lars", **optim.default_hyperparameters("lars"), **keep)
  section.update(momentum=0.9, weight_decay=1e-4, trust_coefficient=0.001, exclude=())
  config.optimizer = ml_collections.ConfigDict(section)


def _exclude_bn_and_biases(config) -> None:
  del config.optimizer["exclude"]  # the default: tensors of rank <= 1


def _poly(config) -> None:
  config.schedule = dict(name="poly", warmup_epochs=config.schedule.warmup_epochs,
                         end_learning_rate=1e-4, power=2.0)


def _longer_warmup(config) -> None:
  config.schedule.warmup_epochs = imagenet_resnet50.mlperf_lars(config.batch_size)[
      "warmup_epochs"]


def _sqrt_legw(config) -> None:
  config.optimizer.update(learning_rate=SQRT_BASE_LR, scaling="sqrt")
  config.schedule.warmup_epochs = min(LEGW_EPOCHS_AT_32K * config.batch_size / 32768,
                                      0.4 * config.num_epochs)


def _label_smoothing(config) -> None:
  config.loss.label_smoothing = 0.1


def _mlperf_decay_and_momentum(config) -> None:
  table = imagenet_resnet50.mlperf_lars(config.batch_size)
  config.optimizer.weight_decay = table["weight_decay"]
  config.optimizer.momentum = table["momentum"]


def _more_epochs(config) -> None:
  epochs = imagenet_resnet50.mlperf_lars(config.batch_size)["epochs"]
  config.num_epochs = epochs
  config.schedule.warmup_epochs = min(config.schedule.warmup_epochs, 0.4 * epochs)


# The changes of steps 1-8, each applied to a copy of the previous step.
STEPS: List[Callable] = [_lars, _exclude_bn_and_biases, _poly, _longer_warmup,
                         _sqrt_legw, _label_smoothing, _mlperf_decay_and_momentum,
                         _more_epochs]


def get_study(arg: str = None) -> Dict[str, points_lib.Point]:
  study = parse_point(arg, batch=819200, tpu="v3", chips=8, mem_gib=0.0)
  machine = f"tpu={study.tpu},chips={study.chips},mem_gib={study.mem_gib}"
  config = imagenet_resnet50.get_config(f"momentum,batch={study.batch},{machine}")
  rungs = [("baseline", config)]
  for change in STEPS:
    config = ml_collections.ConfigDict(config.to_dict())
    change(config)
    rungs.append((change.__name__.lstrip("_"), config))
  points = {}
  for k, (change, config) in enumerate(rungs):
    cell = f"{config.optimizer.name}-b{study.batch}-recipe{k}"
    points[cell] = points_lib.point(config, "ladder", cell=cell, rung=k, change=change)
  return points
