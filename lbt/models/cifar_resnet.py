"""CIFAR ResNets (He et al. 2016 §4.2): resnet20/32/56 and a tiny test model.

3x3 conv with 16 filters, then three stages of n basic blocks with 16, 32 and
64 filters (stride 2 at the start of stages 2 and 3), global average pool and
a Dense classifier: 6n + 2 layers. Shortcuts are option A, which has no
parameters: subsample by 2 and append zero channels.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from lbt.models.common import ResidualBlock, global_avg_pool, logits, register_resnets
from lbt.models.common import resnet_layers, torch_padding

_SAME3 = torch_padding(3)  # padding 1, also for stride 2


class BasicBlockA(ResidualBlock):
  """Two 3x3 convs with a parameter-free (option A) shortcut."""

  @nn.compact
  def __call__(self, x, train: bool, mask=None):
    s = (self.strides, self.strides)
    y = self.conv(self.features, (3, 3), s, padding=_SAME3, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y, train, mask))
    y = self.conv(self.features, (3, 3), padding=_SAME3, name="conv2")(y)
    y = self.last_norm(name="bn2")(y, train, mask)
    if self.strides != 1:
      # Same output size as the strided 3x3 conv with padding 1: ceil(H / s).
      x = x[:, ::self.strides, ::self.strides, :]
    extra = self.features - x.shape[-1]
    if extra:
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
    return nn.relu(x + y)


class CifarResNet(nn.Module):
  """The 6n+2-layer CIFAR ResNet (works at any input size).

  `zero_init_residual` (default on, as for the ImageNet nets) starts each
  block's last BN scale at 0 so that every block is the identity at init.

  References:
    He et al. 2016, "Deep Residual Learning" §4.2,
      https://arxiv.org/abs/1512.03385
    Goyal et al. 2017, "Accurate, Large Minibatch SGD" §5.1 (zero gamma),
      https://arxiv.org/abs/1706.02677
  """
  num_blocks: int
  num_classes: int
  widths: Sequence[int] = (16, 32, 64)
  zero_init_residual: bool = True
  ghost_size: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool, mask=None):
    conv, norm, last_norm = resnet_layers(self.dtype, self.ghost_size,
                                          self.zero_init_residual)
    x = x.astype(self.dtype)
    x = conv(self.widths[0], (3, 3), padding=_SAME3, name="stem_conv")(x)
    x = nn.relu(norm(name="stem_bn")(x, train, mask))
    for i, features in enumerate(self.widths):
      for j in range(self.num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = BasicBlockA(features, strides, conv=conv, norm=norm,
                        last_norm=last_norm,
                        name=f"stage{i + 1}_block{j + 1}")(x, train, mask)
    return logits(global_avg_pool(x), self.num_classes)


register_resnets(CifarResNet, {
    "resnet20": dict(num_blocks=3, widths=(16, 32, 64)),
    "resnet32": dict(num_blocks=5, widths=(16, 32, 64)),
    "resnet56": dict(num_blocks=9, widths=(16, 32, 64)),
    # For fast tests only: one block per stage and a quarter of the widths
    # (an 8-layer net, ~5K parameters at 10 classes).
    "resnet_tiny": dict(num_blocks=1, widths=(4, 8, 16)),
})
