"""VRGD: scale each gradient element by its signal-to-noise ratio across sub-batches.

Jiang et al. (2023) observe that coordinates whose sub-batch gradients agree
(large GSNR) can take full steps while noisy ones should take small steps, and
that this narrows the large-batch generalization gap. The k sub-batches are the
accumulation microbatches, so the statistic costs one extra accumulator: the
train step passes mean_k g_k^2 as the extra argument `microbatch_grad_sq` (with
`num_microbatches` = k >= 2) next to the averaged gradient G = mean_k g_k.

`scale_by_gsnr` is the transformation; `vrgd(base, ...)` puts it in front of any
optax optimizer, and the registered vr_* optimizers are lbt's own optimizers
with it in front (the paper applies it to SGD, Momentum, Adam, LARS and LAMB).
"""

import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lbt.errors import ConfigError
from lbt.optim import masks
# lbt.optim rebinds its submodule names to the factories, hence the aliases.
from lbt.optim.adam import adam as adam_factory
from lbt.optim.lamb import lamb as lamb_factory
from lbt.optim.lars import lars as lars_factory
from lbt.optim.sgd import momentum as momentum_factory
from lbt.optim.sgd import sgd as sgd_factory
from lbt.optim.factory import OPTIMIZERS

NEEDS = ("microbatch_grad_sq", "num_microbatches")


class ScaleByGsnrState(NamedTuple):
  """Moving average of the clipped GSNR (VR-Adam/VR-LAMB); empty when b3 = 0."""
  count: jax.Array
  gsnr: Any


def gsnr_ratio(grad, grad_sq, gamma_low: float, gamma_high: float) -> jax.Array:
  """The clipped, layer-normalised GSNR of one tensor (Algorithm 1, lines 6-10).

  sigma^2 = mean_k g_k^2 - G^2 (eq. 7, floored at 0 against rounding),
  r = G^2 / sigma^2 (eq. 2), r <- r / mean_layer(r) (eq. 8), r <- clip(r,
  gamma_low, gamma_high) (eq. 9, where the paper has gamma_high = 1).

  The limits are taken exactly rather than through an epsilon: a coordinate
  no microbatch moves (G = sigma = 0) has no signal, r = 0; if some
  coordinates have sigma = 0 < |G| (or r overflows), their r is infinite, so
  they share the layer mean and get J / (their number) while every finite one
  gets 0; a layer without any signal gets 0 everywhere (then gamma_low). The
  mean is taken after dividing by the layer's largest r, so it cannot overflow.
  """
  dtype = jnp.promote_types(grad.dtype, jnp.float32)
  grad, grad_sq = grad.astype(dtype), grad_sq.astype(dtype)
  signal = grad * grad
  variance = jnp.maximum(grad_sq - signal, 0)
  positive = variance > 0
  r = jnp.where(positive, signal / jnp.where(positive, variance, 1), 0)
  infinite = jnp.isinf(r) | (~positive & (signal > 0))
  r = jnp.where(infinite, 0, r)
  largest = jnp.max(r)
  r = r / jnp.where(largest > 0, largest, 1)  # in [0, 1]
  mean = jnp.mean(r)
  finite_part = jnp.where(mean > 0, r / jnp.where(mean > 0, mean, 1), 0)
  num_infinite = jnp.sum(infinite)
  infinite_part = jnp.where(infinite, r.size / jnp.maximum(num_infinite, 1), 0)
  r = jnp.where(num_infinite > 0, infinite_part, finite_part).astype(dtype)
  return jnp.clip(r, gamma_low, gamma_high)


def check_band(gamma_low, gamma_high, b3) -> None:
  """ConfigError unless 0 < gamma_low <= gamma_high and 0 <= b3 < 1.

  gamma_low = 0 would freeze the noisiest coordinates for good (the paper keeps
  them "active"); the per-key ranges are repeated here because low <= high
  involves two keys, which a per-key table cannot express.
  """
  def number(v):
    return (isinstance(v, numbers.Real) and not isinstance(v, bool)
            and v == v and abs(v) != float("inf"))
  if not (number(gamma_low) and gamma_low > 0):
    raise ConfigError("optimizer.gamma_low", gamma_low, "a number > 0")
  if not (number(gamma_high) and gamma_high >= gamma_low):
    raise ConfigError("optimizer.gamma_high", gamma_high,
                      f"a number >= gamma_low ({gamma_low})")
  if not (number(b3) and 0 <= b3 < 1):
    raise ConfigError("optimizer.b3", b3, "a number in [0, 1)")


def _check_num_microbatches(num_microbatches) -> None:
  if num_microbatches is None:
    raise ValueError("VRGD needs the extra argument num_microbatches (k >= 2).")
  if isinstance(num_microbatches, numbers.Integral) and num_microbatches < 2:
    raise ValueError(
        f"VRGD needs num_microbatches >= 2 sub-batch gradients to estimate the "
        f"gradient variance; got {num_microbatches}.")


def scale_by_gsnr(
    gamma_low: float = 0.1,
    gamma_high: float = 1.0,
    b3: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
  """G -> p_hat * G elementwise, p_hat the (averaged) clipped normalised GSNR.

  r = gsnr_ratio(G, microbatch_grad_sq) per tensor (every tensor is a layer
  here, biases and BatchNorm included: the paper normalises per layer and
  excludes none). With b3 = 0 (VR-SGD/-Momentum/-LARS) p_hat = r. With b3 > 0
  (VR-Adam/-LAMB, "momentum mechanism on GSNR", beta_3 = 0.9 in the paper):
  p <- b3*p + (1-b3)*r, p_hat = p / (1 - b3^t), t the 1-based update number.

  Extra arguments of `update`: microbatch_grad_sq (tree like params, mean over
  the k microbatches of g_k^2) and num_microbatches (k >= 2).

  References:
    Jiang, Liu, Ding, Guo, Lin, "Accelerating Large Batch Training via Gradient
    Signal to Noise Ratio (GSNR)", 2023, https://arxiv.org/abs/2309.13681 ,
    Algorithm 1 and eqs. 2, 7-10 (VR-SGD); section 4.2 (VR-Adam, VR-LAMB).
  """
  check_band(gamma_low, gamma_high, b3)

  def init_fn(params):
    if b3 == 0:
      return ScaleByGsnrState(count=jnp.zeros([], jnp.int32), gsnr=optax.EmptyState())
    return ScaleByGsnrState(
        count=jnp.zeros([], jnp.int32),
        gsnr=jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.promote_types(
            p.dtype, jnp.float32)), params))

  def update_fn(updates, state, params=None, *, microbatch_grad_sq=None,
                num_microbatches=None, **extra_args):
    del params, extra_args
    if microbatch_grad_sq is None:
      raise ValueError(
          "VRGD needs the extra argument microbatch_grad_sq (a tree like params "
          "of mean_k g_k^2 over the accumulation microbatches).")
    _check_num_microbatches(num_microbatches)
    r = jax.tree.map(
        lambda g, s: gsnr_ratio(g, s, gamma_low, gamma_high),
        updates, microbatch_grad_sq)
    count = optax.safe_increment(state.count)
    gsnr = state.gsnr
    if b3 != 0:
      gsnr = jax.tree.map(lambda p, x: b3 * p + (1 - b3) * x, state.gsnr, r)
      r = jax.tree.map(lambda p: p / (1 - b3 ** count.astype(p.dtype)), gsnr)
    scaled = jax.tree.map(lambda g, x: (x * g).astype(g.dtype), updates, r)
    return scaled, ScaleByGsnrState(count=count, gsnr=gsnr)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def vrgd(base: optax.GradientTransformation, gamma_low: float = 0.1,
         gamma_high: float = 1.0, b3: float = 0.0
         ) -> optax.GradientTransformationExtraArgs:
  """Any optimizer with the GSNR scaling applied to the gradient mean first.

  The paper adapts the gradient mean "before applying" it to the base rule
  (VR-SGD, VR-LARS) or "before the momentum estimation" (VR-Adam, VR-LAMB), so
  the base's weight decay, trust ratio and moments all see r*G.
  """
  return optax.chain(scale_by_gsnr(gamma_low, gamma_high, b3), base)


@OPTIMIZERS.register("vr_sgd")
def vr_sgd(learning_rate: optax.ScalarOrSchedule, weight_decay: float = 0.0,
           exclude: masks.Exclude = None, gamma_low: float = 0.1,
           gamma_high: float = 1.0) -> optax.GradientTransformationExtraArgs:
  """VR-SGD (Algorithm 1, eq. 10): w <- w - gamma_t * (r*G + beta*w).

  Args: as `lbt.optim.sgd`, plus gamma_low/gamma_high (the band of the
  normalised GSNR, eq. 9; the paper fixes 0.1 and 1).
  """
  return vrgd(sgd_factory(learning_rate, weight_decay, exclude),
              gamma_low, gamma_high, 0.0)


@OPTIMIZERS.register("vr_momentum")
def vr_momentum(learning_rate: optax.ScalarOrSchedule, momentum: float = 0.9,
                weight_decay: float = 0.0, exclude: masks.Exclude = None,
                gamma_low: float = 0.1, gamma_high: float = 1.0
                ) -> optax.GradientTransformationExtraArgs:
  """VR-Momentum (section 4.2, Table 5): `momentum` fed r*G instead of G.

  Args: as `lbt.optim.momentum`, plus the band of `vr_sgd`.
  """
  return vrgd(momentum_factory(learning_rate, momentum, weight_decay, exclude),
              gamma_low, gamma_high, 0.0)


@OPTIMIZERS.register("vr_lars")
def vr_lars(learning_rate: optax.ScalarOrSchedule, momentum: float = 0.9,
            weight_decay: float = 0.0, trust_coefficient: float = 0.001,
            eps: float = 0.0, nesterov: bool = False, exclude: masks.Exclude = None,
            gamma_low: float = 0.1, gamma_high: float = 1.0
            ) -> optax.GradientTransformationExtraArgs:
  """VR-LARS (section 4.2): `lars` fed r*G, so its trust ratio uses ||r*G||.

  Args: as `lbt.optim.lars`, plus the band of `vr_sgd`.
  """
  return vrgd(lars_factory(learning_rate, momentum, weight_decay,
                            trust_coefficient, eps, nesterov, exclude),
              gamma_low, gamma_high, 0.0)


@OPTIMIZERS.register("vr_adam")
def vr_adam(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9,
            b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
            exclude: masks.Exclude = None, b3: float = 0.9,
            gamma_low: float = 0.1, gamma_high: float = 1.0
            ) -> optax.GradientTransformationExtraArgs:
  """VR-Adam (section 4.2): `adam` on p_hat*G, p_hat the b3-average of r.

  Args: as `lbt.optim.adam`, plus b3 (GSNR averaging, 0.9 in the paper) and
  the band of `vr_sgd`.
  """
  return vrgd(adam_factory(learning_rate, b1, b2, eps, weight_decay, exclude),
              gamma_low, gamma_high, b3)


@OPTIMIZERS.register("vr_lamb")
def vr_lamb(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9,
            b2: float = 0.999, eps: float = 1e-6, weight_decay: float = 0.0,
            exclude: masks.Exclude = None, b3: float = 0.9,
            gamma_low: float = 0.1, gamma_high: float = 1.0
            ) -> optax.GradientTransformationExtraArgs:
  """VR-LAMB (section 4.2): `lamb` on p_hat*G, p_hat the b3-average of r.

  Args: as `lbt.optim.lamb`, plus b3 and the band of `vr_adam`.
  """
  return vrgd(lamb_factory(learning_rate, b1, b2, eps, weight_decay, exclude),
              gamma_low, gamma_high, b3)


for _factory in (vr_sgd, vr_momentum, vr_lars, vr_adam, vr_lamb):
  _factory.needs = NEEDS
