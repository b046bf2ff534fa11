"""Batch normalization with an explicit statistics batch (Ghost BN).

The size of the batch that BN normalizes over is a variable of a batch-size
study, so it is a field here rather than whatever the step happens to feed in.
Every lbt model builds its BN layers from this one module.
"""

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

Initializer = Callable[..., Any]


class BatchNorm(nn.Module):
  """BatchNorm over the last (feature) axis, optionally with ghost batches.

  In train mode the statistics come from the batch given: all examples and
  spatial positions when `ghost_size == 0`; otherwise the n examples are split
  into n/g ghost batches of g = `ghost_size`, each normalized with its own mean
  and (biased) variance. The running statistics move once per call, towards
  the mean over ghost batches of their means and variances, so that eval sees
  statistics of g-example batches, which is what training normalized with.

  Ghost batch j holds examples j, j + n/g, j + 2n/g, ... (interleaved, not
  consecutive). `lbt.step` cuts microbatches the same strided way (microbatch
  k = examples k, k + m, ...), and only this grouping is unchanged by that cut:
  the ghost batches of a batch are exactly those of its microbatches, so
  gradient accumulation gives the same update as one large batch. Each ghost
  batch also spans every device evenly, whatever the device count.

  Under `jax.jit` with the batch sharded over a mesh, the plain means below
  become cross-device reductions, so no `axis_name` is needed or accepted.

  Statistics and the normalization itself are computed in float32 whatever the
  compute `dtype`; the output is cast to `dtype`.

  Attributes:
    momentum: running = momentum * running + (1 - momentum) * batch.
    epsilon: added to the variance before the square root.
    ghost_size: examples per statistics batch; 0 means the whole batch. Its
      range is checked by `lbt.models.create`; that it divides the batch
      given can only be checked here, where the batch is seen.
    dtype: output (compute) dtype; params and batch_stats stay float32.
    scale_init: initializer of the scale (gamma); zeros for Goyal's
      zero-init-residual trick.
    bias_init: initializer of the bias (beta).

  References:
    Ioffe & Szegedy 2015, "Batch Normalization",
      https://arxiv.org/abs/1502.03167
    Hoffer, Hubara & Soudry 2017, "Train longer, generalize better" §4 (Ghost
      Batch Normalization), https://arxiv.org/abs/1705.08741
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  ghost_size: int = 0
  dtype: Any = jnp.float32
  scale_init: Initializer = nn.initializers.ones
  bias_init: Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x, train: bool, mask=None):
    """Normalizes x; `mask` (n,) marks the real examples of a padded batch.

    Padded examples (mask 0) take no part in the statistics, so a batch that
    had to be padded to fit the devices normalizes exactly like its real
    examples alone; their outputs are computed but carry no loss.
    """
    features = x.shape[-1]
    scale = self.param("scale", self.scale_init, (features,), jnp.float32)
    bias = self.param("bias", self.bias_init, (features,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,),
                            jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (features,),
                           jnp.float32)
    x = x.astype(jnp.float32)

    if not train:
      y = (x - ra_mean.value) * (scale * (ra_var.value + self.epsilon) ** -0.5)
      return (y + bias).astype(self.dtype)

    n = x.shape[0]
    group = self.ghost_size or n
    if n % group:
      raise ValueError(
          f"bn.ghost_size={self.ghost_size} must divide the batch of {n} "
          "examples that BatchNorm sees.")
    # (g, n/g, ...): element [t, j] is example t * n/g + j, so ghost batch j
    # is column j and its statistics reduce over axis 0 and the spatial axes.
    # With ghost_size == 0 there is one column: plain BN on the same path.
    xg = x.reshape((group, n // group) + x.shape[1:])
    axes = (0,) + tuple(range(2, xg.ndim - 1))
    if mask is None:
      mean = jnp.mean(xg, axis=axes, keepdims=True)
      # Two-pass variance: E[(x - mean)^2] does not cancel catastrophically
      # the way E[x^2] - E[x]^2 does when |mean| >> std.
      var = jnp.mean(jnp.square(xg - mean), axis=axes, keepdims=True)
      average = lambda stat: jnp.mean(stat.reshape(-1, features), axis=0)
    else:
      weights = jnp.broadcast_to(
          mask.astype(jnp.float32).reshape((group, n // group) + (1,) * (xg.ndim - 2)),
          xg.shape[:-1] + (1,))
      count = jnp.sum(weights, axis=axes, keepdims=True)
      safe_count = jnp.maximum(count, 1.0)  # a ghost batch of padding only
      mean = jnp.sum(xg * weights, axis=axes, keepdims=True) / safe_count
      var = jnp.sum(jnp.square(xg - mean) * weights, axis=axes,
                    keepdims=True) / safe_count
      # Ghost batches weigh by their real examples in the running statistics.
      share = count.reshape(-1, 1) / jnp.sum(count)
      average = lambda stat: jnp.sum(stat.reshape(-1, features) * share, axis=0)
    y = (xg - mean) * (scale * (var + self.epsilon) ** -0.5) + bias

    # Leave the initial statistics alone while `init` traces the model, so
    # that variables do not depend on the dummy batch used to build them.
    if not self.is_initializing():
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * average(mean)
      ra_var.value = m * ra_var.value + (1 - m) * average(var)
    return y.reshape(x.shape).astype(self.dtype)
