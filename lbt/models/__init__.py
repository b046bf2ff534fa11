"""Models by name: `create(name, num_classes, ...)` returns a flax linen Module.

Every model takes NHWC float32 images, returns float32 logits, and normalizes
with `lbt.models.norm.BatchNorm` (collection 'batch_stats'), so the trainer
treats them all alike:

  module = create("resnet20", num_classes=10, ghost_size=128)
  logits, updates = module.apply(variables, x, train=True,
                                 mutable=["batch_stats"])

May import: `lbt.io` and the ground floor (`lbt.errors`, `lbt.registry`,
`lbt.stats`); not `lbt.data` or `lbt.optim`, its neighbours on its
floor, nor anything above (tests/test_layers.py).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from lbt.errors import ConfigError
from lbt.models.common import MODELS

# Imported for their registrations.
from lbt.models import cifar_resnet  # noqa: F401  pylint: disable=unused-import
from lbt.models import lenet  # noqa: F401  pylint: disable=unused-import
from lbt.models import mlp  # noqa: F401  pylint: disable=unused-import
from lbt.models import resnet  # noqa: F401  pylint: disable=unused-import

# Arguments every factory takes from lbt rather than from config.model.
INTERNAL_ARGUMENTS = ("num_classes", "ghost_size", "dtype")


def create(name: str, num_classes: int, *, ghost_size: int = 0,
           dtype: Any = jnp.float32, **kwargs) -> nn.Module:
  """Builds the model registered as `name`.

  The owner of bn.ghost_size's range (every BatchNorm of the model uses it);
  each factory owns the values of its own options. The options a model
  accepts are `options(name)`.

  Args:
    name: one of `names()`.
    num_classes: size of the logits.
    ghost_size: examples per BN statistics batch in every BN layer; 0 means
      the whole batch the model is given (see `norm.BatchNorm`).
    dtype: compute dtype (e.g. jnp.bfloat16); params stay float32 and the
      logits are returned as float32.
    **kwargs: model-specific options, e.g. `hidden_sizes` for "mlp",
      `width` for "lenet5", `zero_init_residual` for the ResNets.

  Returns:
    An unbound flax.linen Module called as `module(x, train=...)`.

  Raises:
    KeyError: unknown `name` (the message lists the known names).
    TypeError: an option the model does not take (Python names both).
    ConfigError (a ValueError): a ghost_size that is not an integer >= 0, or
      an option value the model refuses.
  """
  factory = MODELS.get(name, field="model.name")
  if isinstance(ghost_size, bool) or not isinstance(ghost_size, int) or ghost_size < 0:
    raise ConfigError("bn.ghost_size", ghost_size,
                      "an integer >= 0 (0: statistics over the whole batch)")
  return factory(num_classes=num_classes, ghost_size=ghost_size, dtype=dtype,
                 **kwargs)


def options(name: str) -> dict:
  """The options config.model may hold for model `name`, with their defaults."""
  return MODELS.options(name, internal=INTERNAL_ARGUMENTS)


def names() -> list:
  """Names accepted by `create`, sorted."""
  return MODELS.names()
