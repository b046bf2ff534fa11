"""Every optimizer lbt has at a small, a large and the full batch, each LR-tuned.

  python -m lbt.study --study=configs/studies/fashion_mnist_optimizers.py \\
      --workdir=studies/optimizers
  python -m lbt.study --study=configs/studies/fashion_mnist_optimizers.py:quick \\
      --workdir=studies/optimizers_quick

The large-batch optimizers that followed LARS and LAMB (LANS, CLARS, the VRGD
family) each claim to beat them at large batch; this study puts all of them on
one trainer, with the same model, data and budget. Every point is the default
study's (`configs/studies/fashion_mnist.py:point`: the 128-128 MLP, EPOCHS
epochs, cosine decay) with its optimizer's settings from
`configs/fashion_mnist.py` (the scaling rule from B0 = 256, CLARS without
warmup, the microbatches VRGD and CLARS need), at the batches of LR_GRIDS:
256, 8192 and the full training set. At the two large batches each
(optimizer, batch) is a grid of base learning rates (x0.5, x1, x2 the
optimizer's default), trained on 50,000 examples; the report keeps the member
with the best accuracy on the 10,000 held out (`dataset.validation_examples`),
so no optimizer is ranked at large batch on an untuned LR. At 256, the
reference batch B0 of every scaling rule, each optimizer runs its default
(a grid of one, same hold-out): the study is about large batches, and the
third grid would cost a quarter of the budget. The full batch is therefore
50,000, one update per epoch.

Points are built by the default study's `tuned_grid`: each (optimizer, batch)
is one tuned cell whose trials' roles carry their learning rates
(`lbt.studies.points`), labelled `<optimizer>-b<batch>-tuned-lr<base lr>`; the
report's accuracy table then shows each cell at its chosen LR, "(LR tuned)",
batch by batch.

Budget: 16 optimizers x (1 + 3 + 3) = 112 points. Measured on the shared
2-core CPU (one device, load average ~8 from other jobs), `--shard=0/16` of a
3-LR-everywhere version (9 points, 2 of them VRGD and 1 CLARS) took 87 s of
point time, 69 CPU-s: ~7 s a point (~15 s for CLARS, its per-example
gradients), so ~13 min for the 112 points on an idle machine and ~18 min
under that load. `:quick` is 3 points (LARS, CLARS and VR-LAMB at 8192,
default LR) that check the path end to end in under a minute.

References:
  You et al. 2020, https://arxiv.org/abs/2006.08517 (the nine optimizers);
  Zheng et al. 2020 (LANS); Huo, Gu, Huang 2021 (CLARS); Jiang et al. 2023
  (VRGD): see lbt/optim/lans.py, clars.py, gsnr.py.
"""

from typing import Dict

from configs.studies import fashion_mnist as default_study
from lbt import optim
from lbt.errors import ConfigError
from lbt.studies import points as points_lib

VALIDATION_EXAMPLES = default_study.VALIDATION_EXAMPLES  # 10,000 held out
FULL_BATCH = default_study.TRAIN_SPLIT - VALIDATION_EXAMPLES
# Batch -> factors of the optimizer's default base LR (its grid).
LR_GRIDS = {256: (1.0,), 8192: (0.5, 1.0, 2.0), FULL_BATCH: (0.5, 1.0, 2.0)}
QUICK = (("lars", 8192), ("clars", 8192), ("vr_lamb", 8192))


def optimizers() -> tuple:
  """Every registered optimizer: the nine of the paper's study and those after."""
  return tuple(optim.OPTIMIZERS.names())


def get_study(arg: str = None) -> Dict[str, points_lib.Point]:
  if arg not in (None, "", "quick"):
    raise ConfigError("--study argument", arg, "none (the whole study) or 'quick'")
  if arg == "quick":
    points = {}
    for optimizer, batch in QUICK:
      points.update(default_study.tuned_grid(optimizer, batch, factors=(1.0,)))
    return points
  points = {}
  for optimizer in optimizers():
    for batch, factors in LR_GRIDS.items():
      points.update(default_study.tuned_grid(optimizer, batch, factors))
  return points
