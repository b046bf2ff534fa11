"""LARS as published: layer-wise trust ratio, learning rate inside momentum.

optax.lars (0.2.8) also scales by the learning rate before `trace`, but it
computes the trust ratio from ||g + beta*w|| instead of the paper's
||g|| + beta*||w||, and by default it decays and adapts every tensor, biases
and BatchNorm included. Here the published ratio and explicit masks are used.
"""

import jax.numpy as jnp
import optax

from lbt.optim import masks
from lbt.optim import trust
from lbt.optim.factory import OPTIMIZERS


def trust_scaled_direction(g, w, gradient_norm, weight_decay: float,
                           trust_coefficient: float, eps: float):
  """(lambda * (g + beta*w), lambda), lambda = eta*||w|| / (n + beta*||w|| + eps).

  n is ||g|| for LARS and the mean per-example gradient norm for CLARS;
  lambda is 1 when ||w|| or n is 0.
  """
  w = w.astype(g.dtype)
  w_norm = trust.norm(w)
  gradient_norm = jnp.asarray(gradient_norm, w_norm.dtype)
  ratio = trust.safe_ratio(trust_coefficient * w_norm,
                           gradient_norm + weight_decay * w_norm + eps,
                           w_norm, gradient_norm)
  return (ratio.astype(g.dtype) * (g + weight_decay * w)).astype(g.dtype), ratio


def scale_by_lars_trust_ratio(
    weight_decay: float = 0.0,
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    exclude: masks.Exclude = None,
) -> optax.GradientTransformation:
  """g -> lambda * (g + beta*w) on adapted tensors, g on excluded ones.

  lambda = eta*||w|| / (||g|| + beta*||w|| + eps), and 1 when ||w|| or ||g||
  is 0. Decay and trust ratio live in one transformation because lambda needs
  the raw gradient norm, which is lost once the decay term is added. Each norm
  is computed once per tensor. The state keeps lambda for `trust_ratio_stats`.

  References:
    You, Gitman, Ginsburg, "Large Batch Training of Convolutional Networks",
    2017, Algorithm 1, https://arxiv.org/abs/1708.03888
  """
  mask_fn = masks.decay_and_trust_mask(exclude)

  def adapted(g, w):
    return trust_scaled_direction(g, w, trust.norm(g), weight_decay,
                                  trust_coefficient, eps)

  return trust.layerwise(adapted, mask_fn)


@OPTIMIZERS.register("lars")
def lars(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    nesterov: bool = False,
    exclude: masks.Exclude = None,
) -> optax.GradientTransformation:
  """LARS (Algorithm 1) with the MLPerf/TF reference treatment of excluded tensors.

  Per adapted tensor, with gamma_t = learning_rate(count), count 0-based:
    lambda = eta*||w|| / (||g|| + beta*||w|| + eps)   (1 if ||w|| or ||g|| = 0)
    v <- m*v + gamma_t * lambda * (g + beta*w)
    w <- w - v                   (nesterov: w <- w - (m*v + gamma_t*lambda*(g + beta*w)))
  Excluded tensors (default: ndim <= 1, i.e. biases and BN): v <- m*v + gamma_t*g,
  no decay, no trust ratio.

  Chain: scale_by_lars_trust_ratio (coupled L2 decay, inside the trust ratio),
  scale_by_learning_rate, trace. The learning rate therefore sits INSIDE the
  momentum buffer, as in the paper: a schedule change affects only new
  gradients, not the velocity already accumulated.

  Args:
    learning_rate: float or optax schedule of the 0-based update count.
    momentum: m, heavy-ball coefficient.
    weight_decay: beta, L2 coefficient (coupled, scaled by gamma_t and lambda).
    trust_coefficient: eta; eta/beta bounds the largest layer-wise scaling.
    eps: added to the trust-ratio denominator (0 in the TF/flax references).
    nesterov: use the Nesterov form of the momentum step.
    exclude: None (ndim <= 1) or regexes on 'Layer/param' paths; see masks.py.

  References:
    You, Gitman, Ginsburg, "Large Batch Training of Convolutional Networks",
    2017, https://arxiv.org/abs/1708.03888 ;
    tensorflow/tpu models/official/efficientnet/lars_optimizer.py ;
    MLPerf Training v0.7 Google resnet_jax (LARS on kernels only).
  """
  return optax.chain(
      scale_by_lars_trust_ratio(weight_decay, trust_coefficient, eps, exclude),
      optax.scale_by_learning_rate(learning_rate),
      optax.trace(decay=momentum, nesterov=nesterov),
  )
