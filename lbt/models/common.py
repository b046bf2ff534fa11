"""What every model family shares: the registry, conv init, the classifier."""

import functools
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax.numpy as jnp

from lbt.models.norm import BatchNorm
from lbt.registry import Registry

# name -> factory(num_classes, ghost_size, dtype, **options) -> nn.Module.
MODELS = Registry("model")
# A flax module constructor passed into a block (conv, norm): a partial.
ModuleDef = Any

# He-normal with fan_out and no truncation, as torchvision's ResNets use
# (kaiming_normal_(mode="fan_out", nonlinearity="relu")).
# References: He et al. 2015, "Delving Deep into Rectifiers",
#   https://arxiv.org/abs/1502.01852
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_padding(k: int):
  """Explicit padding k // 2 on each side, as torchvision's convs (not XLA's
  SAME, which pads a strided conv asymmetrically)."""
  return ((k // 2, k // 2), (k // 2, k // 2))


class ResidualBlock(nn.Module):
  """The fields every residual block takes; subclasses define __call__."""
  features: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  last_norm: ModuleDef  # the residual branch's last BN (zero-init option)


def resnet_layers(dtype, ghost_size: int, zero_init_residual: bool):
  """The conv, BN and last-BN-of-a-block constructors every ResNet shares.

  The last BN of a residual branch starts at scale 0 when zero_init_residual
  (Goyal et al. 2017), so each block starts as the identity.
  """
  conv = functools.partial(nn.Conv, use_bias=False, dtype=dtype, kernel_init=conv_init)
  norm = functools.partial(BatchNorm, ghost_size=ghost_size, dtype=dtype)
  last_norm = functools.partial(
      norm, scale_init=(nn.initializers.zeros if zero_init_residual
                        else nn.initializers.ones))
  return conv, norm, last_norm


def logits(x, num_classes: int, name: str = "head"):
  """Final Dense (with bias) computed in float32.

  The classifier is a negligible share of the compute, and float32 logits keep
  the softmax cross-entropy accurate when the body runs in bfloat16.
  """
  return nn.Dense(num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                  name=name)(x.astype(jnp.float32))


def global_avg_pool(x):
  """Mean over the spatial axes of NHWC, accumulated in float32."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def register_resnets(module_cls: Callable, variants: Mapping[str, Mapping[str, Any]]
                     ) -> None:
  """Registers one factory per ResNet variant: `module_cls(**variant, ...)`.

  Each factory takes the one option the ResNets share, zero_init_residual, so
  that `config.model` may set it; the variant fixes depth and block.
  """
  def make(name, fixed):
    def factory(num_classes, ghost_size, dtype, zero_init_residual=True):
      return module_cls(num_classes=num_classes, zero_init_residual=zero_init_residual,
                        ghost_size=ghost_size, dtype=dtype, **fixed)
    factory.__name__ = factory.__qualname__ = name  # named in TypeErrors
    return factory

  for name, fixed in variants.items():
    MODELS.register(name)(make(name, fixed))
