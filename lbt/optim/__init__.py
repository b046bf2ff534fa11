"""Optimizers, schedules and LR scaling rules for large-batch training.

Every optimizer is an optax chain with explicit decay/adaptation masks
(`exclude`), registered by name; configs reach them through `create`.

May import: `lbt.io` and the ground floor (`lbt.errors`, `lbt.registry`,
`lbt.stats`); not `lbt.data` or `lbt.models`, its neighbours on its
floor, nor anything above (tests/test_layers.py).
"""

from lbt.optim.factory import OPTIMIZERS
from lbt.optim.factory import check
from lbt.optim.factory import create
from lbt.optim.factory import create_by_name
from lbt.optim.factory import create_with_learning_rate_input
from lbt.optim.factory import default_hyperparameters
from lbt.optim.factory import effective_learning_rate
from lbt.optim.factory import needs
from lbt.optim.factory import set_learning_rate
from lbt.optim.masks import decay_and_trust_mask
from lbt.optim.schedules import create_schedule
from lbt.optim.schedules import warmup_note
from lbt.optim.trust import TrustRatioState
from lbt.optim.trust import trust_ratio_stats
# Optimizer modules register themselves in OPTIMIZERS on import.
from lbt.optim.adagrad import adagrad
from lbt.optim.adam import adam
from lbt.optim.adamw import adamw
from lbt.optim.clars import clars
from lbt.optim.gsnr import vr_adam
from lbt.optim.gsnr import vr_lamb
from lbt.optim.gsnr import vr_lars
from lbt.optim.gsnr import vr_momentum
from lbt.optim.gsnr import vr_sgd
from lbt.optim.gsnr import vrgd
from lbt.optim.lamb import lamb
from lbt.optim.lans import lans
from lbt.optim.lars import lars
from lbt.optim.rmsprop import rmsprop
from lbt.optim.sgd import momentum
from lbt.optim.sgd import nesterov
from lbt.optim.sgd import sgd

__all__ = [
    "OPTIMIZERS", "TrustRatioState", "adagrad", "adam", "adamw", "check",
    "create", "create_by_name", "create_schedule", "create_with_learning_rate_input",
    "decay_and_trust_mask",
    "default_hyperparameters",
    "effective_learning_rate", "lamb", "lars", "momentum", "needs", "nesterov",
    "rmsprop", "set_learning_rate", "sgd", "trust_ratio_stats", "warmup_note",
    "clars", "lans", "vr_adam", "vr_lamb", "vr_lars", "vr_momentum", "vr_sgd",
    "vrgd",
]
