"""ImageNet ResNets (v1.5), laid out as torchvision's so counts match exactly.

resnet18/34 use basic blocks, resnet50 bottlenecks with the stride on the 3x3
conv (v1.5). Stem: 7x7/2 conv, BN, ReLU, 3x3/2 max pool. Shortcuts are
identity, or a 1x1 strided conv + BN where the shape changes (option B).
Padding follows torchvision (explicit 3 / 1 / 1), not XLA's SAME.
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from lbt.models.common import ResidualBlock, global_avg_pool, logits, register_resnets
from lbt.models.common import resnet_layers, torch_padding as _pad


class BasicBlock(ResidualBlock):
  """Two 3x3 convs (resnet18/34)."""

  @nn.compact
  def __call__(self, x, train: bool, mask=None):
    s = (self.strides, self.strides)
    y = self.conv(self.features, (3, 3), s, padding=_pad(3), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y, train, mask))
    y = self.conv(self.features, (3, 3), padding=_pad(3), name="conv2")(y)
    y = self.last_norm(name="bn2")(y, train, mask)
    if x.shape[-1] != self.features or self.strides != 1:
      x = self.conv(self.features, (1, 1), s, name="proj_conv")(x)
      x = self.norm(name="proj_bn")(x, train, mask)
    return nn.relu(x + y)


class Bottleneck(ResidualBlock):
  """1x1 -> 3x3 (strided, v1.5) -> 1x1 x4 (resnet50 and deeper)."""

  @nn.compact
  def __call__(self, x, train: bool, mask=None):
    s = (self.strides, self.strides)
    out = self.features * 4
    y = self.conv(self.features, (1, 1), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y, train, mask))
    y = self.conv(self.features, (3, 3), s, padding=_pad(3), name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y, train, mask))
    y = self.conv(out, (1, 1), name="conv3")(y)
    y = self.last_norm(name="bn3")(y, train, mask)
    if x.shape[-1] != out or self.strides != 1:
      x = self.conv(out, (1, 1), s, name="proj_conv")(x)
      x = self.norm(name="proj_bn")(x, train, mask)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet for 224x224 ImageNet (works at any input size).

  `zero_init_residual` starts each residual branch's last BN scale at 0 so
  that every block is the identity at init, which Goyal et al. found makes
  large-batch training with a large learning rate easier to start.

  References:
    He et al. 2016, "Deep Residual Learning", https://arxiv.org/abs/1512.03385
    Goyal et al. 2017, "Accurate, Large Minibatch SGD" §5.1 (zero gamma),
      https://arxiv.org/abs/1706.02677
  """
  stage_sizes: Sequence[int]
  block_cls: Callable
  num_classes: int
  num_filters: int = 64
  zero_init_residual: bool = True
  ghost_size: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool, mask=None):
    conv, norm, last_norm = resnet_layers(self.dtype, self.ghost_size,
                                          self.zero_init_residual)
    x = x.astype(self.dtype)
    x = conv(self.num_filters, (7, 7), (2, 2), padding=_pad(7),
             name="stem_conv")(x)
    x = nn.relu(norm(name="stem_bn")(x, train, mask))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_pad(3))
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = self.block_cls(self.num_filters * 2**i, strides, conv=conv,
                           norm=norm, last_norm=last_norm,
                           name=f"stage{i + 1}_block{j + 1}")(x, train, mask)
    return logits(global_avg_pool(x), self.num_classes)


register_resnets(ResNet, {
    "resnet18": dict(stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock),
    "resnet34": dict(stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock),
    "resnet50": dict(stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck),
})
