"""What every model family shares: the registry, conv init, the classifier."""

import flax.linen as nn
import jax.numpy as jnp

from lbt.registry import Registry

# name -> factory(num_classes, ghost_size, dtype, **options) -> nn.Module.
MODELS = Registry("model")

# He-normal with fan_out and no truncation, as torchvision's ResNets use
# (kaiming_normal_(mode="fan_out", nonlinearity="relu")).
# References: He et al. 2015, "Delving Deep into Rectifiers",
#   https://arxiv.org/abs/1502.01852
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


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
