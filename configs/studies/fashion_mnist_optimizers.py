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
warmup, the microbatches VRGD and CLARS need), at BATCHES: 256, 8192 and the
full training set. Each (optimizer, batch) is a grid of base learning rates
(FACTORS times the optimizer's default), trained on 50,000 examples; the report
keeps the member with the best accuracy on the 10,000 held out
(`dataset.validation_examples`), so no optimizer is ranked on an untuned LR.
The full batch is therefore 50,000, one update per epoch.

Points are built by the default study's `tuned_grid`, so they are named as its
tuned grid is, `<optimizer>-b<batch>-tuned-lr<base lr>` (`lbt.study.grid_of`
strips the `-lr...` to find the grid); the report's accuracy table then shows
each (optimizer, batch) at its chosen LR, "(LR tuned)", batch by batch.

Budget: 16 optimizers x 3 batches x 3 LRs = 144 points; see BUDGET for the
measured cost on the 2-core machine. `:quick` is 3 points (LARS, CLARS and
VR-LAMB at 8192, default LR) that check the path end to end in about a minute.

References:
  You et al. 2020, https://arxiv.org/abs/2006.08517 (the nine optimizers);
  Zheng et al. 2020 (LANS); Huo, Gu, Huang 2021 (CLARS); Jiang et al. 2023
  (VRGD): see lbt/optim/lans.py, clars.py, gsnr.py.
"""

from typing import Dict

import ml_collections

from configs.studies import fashion_mnist as default_study
from lbt import optim
from lbt.errors import ConfigError

VALIDATION_EXAMPLES = default_study.VALIDATION_EXAMPLES  # 10,000 held out
FULL_BATCH = 60000 - VALIDATION_EXAMPLES
BATCHES = (256, 8192, FULL_BATCH)
FACTORS = (0.5, 1.0, 2.0)
QUICK = (("lars", 8192), ("clars", 8192), ("vr_lamb", 8192))
# Measured on the shared 2-core CPU (one device), see the closing note of issue 16.
BUDGET = "about 15 minutes"


def optimizers() -> tuple:
  """Every registered optimizer: the nine of the paper's study and those after."""
  return tuple(optim.OPTIMIZERS.names())


def get_study(arg: str = None) -> Dict[str, ml_collections.ConfigDict]:
  if arg not in (None, "", "quick"):
    raise ConfigError("--study argument", arg, "none (the whole study) or 'quick'")
  if arg == "quick":
    points = {}
    for optimizer, batch in QUICK:
      points.update(default_study.tuned_grid(optimizer, batch, factors=(1.0,)))
    return points
  points = {}
  for optimizer in optimizers():
    for batch in BATCHES:
      points.update(default_study.tuned_grid(optimizer, batch, FACTORS))
  return points
