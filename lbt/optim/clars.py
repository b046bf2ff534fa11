"""CLARS: LARS whose trust ratio divides by the mean per-example gradient norm.

Early in training the examples of a large batch disagree, so the norm of each
example's gradient is much larger than the norm of their average: dividing by
the former gives small layer-wise rates while the gradient variance is high and
larger ones as it falls, which is the warmup CLARS claims to make unnecessary.

The paper's text could not be retrieved here (only its abstract: arXiv
2002.01576 / AAAI 2021), so the rule below is a reading of that abstract
(the ratio's denominator is the layer's mean per-example gradient norm), not
an equation checked against the paper.

The per-example norms are not a function of the averaged gradient: the train
step computes them (jax.vmap over the examples of each microbatch, one extra
per-example backward pass whose memory grows with the microbatch times the
largest layer; `lbt.engine.step.mean_per_example_grad_norm`) and passes them as the
extra argument `per_example_grad_norm`.
"""

import jax
import jax.numpy as jnp
import optax

from lbt.optim import masks
from lbt.optim import trust
from lbt.optim.factory import OPTIMIZERS
from lbt.optim.lars import trust_scaled_direction

NEEDS = ("per_example_grad_norm",)


def scale_by_clars_trust_ratio(
    weight_decay: float = 0.0,
    trust_coefficient: float = 1.0,
    eps: float = 0.0,
    exclude: masks.Exclude = None,
) -> optax.GradientTransformationExtraArgs:
  """g -> lambda * (g + beta*w) on adapted tensors, g on excluded ones.

  lambda = eta*||w|| / (n + beta*||w|| + eps), with n = (1/B) sum_i ||grad_i||
  the tensor's mean per-example gradient norm (extra argument
  `per_example_grad_norm`, a tree like params of scalars), and lambda = 1 when
  ||w|| or n is 0. With beta = eps = 0 and eta = 1 this is the recorded rule
  lambda = ||w|| / n; the beta*||w|| term bounds the per-example norm of the
  regularised loss as LARS bounds the batch one (n >= ||g|| by the triangle
  inequality, so CLARS never steps further than LARS with the same eta).

  References:
    Huo, Gu, Huang, "Large Batch Optimization for Deep Learning Using New
    Complete Layer-Wise Adaptive Rate Scaling", AAAI 2021 (arXiv 2002.01576,
    "Large Batch Training Does Not Need Warmup").
  """
  mask_fn = masks.decay_and_trust_mask(exclude)

  def init_fn(params):
    return trust.init_state(params, mask_fn(params))

  def update_fn(updates, state, params=None, *, per_example_grad_norm=None,
                **extra_args):
    del state, extra_args
    if params is None:
      raise ValueError(optax.NO_PARAMS_MSG)
    if per_example_grad_norm is None:
      raise ValueError(
          "CLARS needs the extra argument per_example_grad_norm (a tree like "
          "params of each tensor's mean per-example gradient norm); the train "
          "step passes it when the optimizer factory's `needs` names it.")
    grads, treedef = jax.tree_util.tree_flatten(updates)
    new_updates, ratios = [], []
    for g, w, n, adapted in zip(grads, treedef.flatten_up_to(params),
                                treedef.flatten_up_to(per_example_grad_norm),
                                treedef.flatten_up_to(mask_fn(params))):
      if not adapted:
        new_updates.append(g)
        ratios.append(optax.MaskedNode())
        continue
      u, ratio = trust_scaled_direction(g, w, n, weight_decay, trust_coefficient, eps)
      new_updates.append(u)
      ratios.append(ratio.astype(jnp.float32))
    return (treedef.unflatten(new_updates),
            trust.TrustRatioState(trust_ratio=treedef.unflatten(ratios)))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@OPTIMIZERS.register("clars")
def clars(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    trust_coefficient: float = 1.0,
    eps: float = 0.0,
    nesterov: bool = False,
    exclude: masks.Exclude = None,
) -> optax.GradientTransformationExtraArgs:
  """CLARS: LARS (learning rate inside momentum) with the per-example trust ratio.

  Per adapted tensor, gamma_t = learning_rate(count), count 0-based:
    lambda = eta*||w|| / (mean_i ||grad_i f|| + beta*||w|| + eps)  (1 if a norm is 0)
    v <- m*v + gamma_t * lambda * (g + beta*w);   w <- w - v
  g is still the batch-averaged gradient: only the ratio changes. Excluded
  tensors (default ndim <= 1) take v <- m*v + gamma_t*g, as in `lars`.

  Chain: scale_by_clars_trust_ratio (coupled L2 decay inside the ratio),
  scale_by_learning_rate, trace. It is meant to run with warmup_epochs = 0.
  `update` needs the extra argument per_example_grad_norm (see `clars.needs`).

  Args:
    learning_rate: float or optax schedule of the 0-based update count.
    momentum: m, heavy-ball coefficient.
    weight_decay: beta, L2 coefficient (coupled, scaled by gamma_t and lambda).
    trust_coefficient: eta; 1 gives the recorded rule gamma_t*||w||/n, where
      LARS's 0.001 is folded into the learning rate.
    eps: added to the ratio's denominator.
    nesterov: use the Nesterov form of the momentum step.
    exclude: None (ndim <= 1) or regexes on 'Layer/param' paths; see masks.py.

  References:
    Huo, Gu, Huang, AAAI 2021, arXiv 2002.01576 (the rule read from its
    abstract; the paper's equations were not retrievable).
  """
  return optax.chain(
      scale_by_clars_trust_ratio(weight_decay, trust_coefficient, eps, exclude),
      optax.scale_by_learning_rate(learning_rate),
      optax.trace(decay=momentum, nesterov=nesterov),
  )


clars.needs = NEEDS
