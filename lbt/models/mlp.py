"""Fully connected net with BN: Hoffer et al.'s MNIST "F1" family."""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from lbt.models.common import MODELS, logits
from lbt.models.norm import BatchNorm


class MLP(nn.Module):
  """Flatten, then Dense -> BN -> ReLU per hidden layer, then Dense to logits.

  Hidden Dense layers have no bias: the BN that follows subtracts the mean, so
  a bias there would get zero gradient and only add dead parameters to weight
  decay and to the norms a batch-size study tracks.

  References:
    Hoffer, Hubara & Soudry 2017, "Train longer, generalize better", model F1
      (5 x FC-512 + BN + ReLU), https://arxiv.org/abs/1705.08741
  """
  num_classes: int
  hidden_sizes: Sequence[int] = (512, 512)
  ghost_size: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool, mask=None):
    x = x.reshape((x.shape[0], -1)).astype(self.dtype)
    for i, size in enumerate(self.hidden_sizes):
      x = nn.Dense(size, use_bias=False, dtype=self.dtype, name=f"dense{i}")(x)
      x = BatchNorm(ghost_size=self.ghost_size, dtype=self.dtype,
                    name=f"bn{i}")(x, train, mask)
      x = nn.relu(x)
    return logits(x, self.num_classes)


@MODELS.register("mlp")
def mlp(num_classes, ghost_size, dtype, hidden_sizes=(512, 512)):
  return MLP(num_classes=num_classes, hidden_sizes=tuple(hidden_sizes),
             ghost_size=ghost_size, dtype=dtype)
