"""LeNet-5 in its modern form (ReLU, max pooling, BN), for 28x28 inputs."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from lbt.errors import ConfigError
from lbt.models.common import MODELS, logits
from lbt.models.norm import BatchNorm


def max_pool_2x2(x):
  """2x2 max pooling with stride 2 (floor: an odd last row/column is dropped).

  The same values as `nn.max_pool(x, (2, 2), strides=(2, 2))`, written as a
  reshape and a max over the two window axes. Why: jax differentiates
  `reduce_window` max as a variadic reduce-window that also carries the argmax
  (four int32 index arrays of the input's shape) and a scatter, and on
  XLA:CPU that backward pass cost ~20 % of LeNet-5's whole training step
  (benchmarks/roofline.py); a reduction's gradient is a compare and a select,
  fused with its neighbours. Ties share the gradient equally instead of going to
  one element; after ReLU a tie is either all zeros (zero gradient either way)
  or of measure zero.
  """
  n, h, w, c = x.shape
  x = x[:, :h - h % 2, :w - w % 2, :]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class LeNet5(nn.Module):
  """conv5x5(6, SAME) -> pool, conv5x5(16, VALID) -> pool, FC 120, FC 84, FC.

  Each conv and hidden FC is followed by BN and ReLU. SAME padding on the first
  conv turns 28x28 Fashion-MNIST into the 32x32 geometry of the original (5x5x16
  = 400 features before FC 120). `width` scales every hidden width so that a
  wider variant can trade speed for accuracy. Layers followed by BN have no
  bias (it would get zero gradient).

  References:
    LeCun et al. 1998, "Gradient-Based Learning Applied to Document
      Recognition", http://yann.lecun.com/exdb/publis/pdf/lecun-98.pdf
  """
  num_classes: int
  width: float = 1
  ghost_size: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool, mask=None):
    w = lambda n: max(1, int(round(n * self.width)))
    bn = lambda name: BatchNorm(ghost_size=self.ghost_size, dtype=self.dtype,
                                name=name)
    x = x.astype(self.dtype)
    for i, (features, padding) in enumerate(((6, "SAME"), (16, "VALID"))):
      x = nn.Conv(w(features), (5, 5), padding=padding, use_bias=False,
                  dtype=self.dtype, name=f"conv{i}")(x)
      x = nn.relu(bn(f"conv_bn{i}")(x, train, mask))
      x = max_pool_2x2(x)
    x = x.reshape((x.shape[0], -1))
    for i, features in enumerate((120, 84)):
      x = nn.Dense(w(features), use_bias=False, dtype=self.dtype,
                   name=f"dense{i}")(x)
      x = nn.relu(bn(f"dense_bn{i}")(x, train, mask))
    return logits(x, self.num_classes)


@MODELS.register("lenet5")
def lenet5(num_classes, ghost_size, dtype, width=1):
  if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
    raise ConfigError("model.width", width, "a number > 0 (scales every hidden width)")
  return LeNet5(num_classes=num_classes, width=width, ghost_size=ghost_size,
                dtype=dtype)
