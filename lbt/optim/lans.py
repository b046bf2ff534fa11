"""LANS: LAMB on block-normalised gradients, plus a Nesterov-style current-gradient step.

LANS took BERT pre-training to a 96K batch (54 minutes). It differs from LAMB in
two places, both read from the authors' reference kernel: every tensor's
gradient is divided by its own norm before it enters the moments (so no global
clipping is needed), and the step mixes two trust-ratio-scaled directions, the
momentum one weighted b1 and the current normalised gradient weighted 1 - b1.
optax has no transformation that exposes sqrt(v_hat) for the second direction,
so the whole per-tensor rule lives in one transformation here.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lbt.optim import masks
from lbt.optim import trust
from lbt.optim.factory import OPTIMIZERS


class ScaleByLansState(NamedTuple):
  """Adam moments of the normalised gradient, and the two directions' ratios.

  `trust_ratio` holds the momentum direction's ratio and `current_trust_ratio`
  the current-gradient direction's; `trust_ratio_stats` pools both, since each
  is a per-layer learning-rate multiplier of the step.
  """
  count: jax.Array
  mu: Any
  nu: Any
  trust_ratio: trust.TrustRatioState
  current_trust_ratio: trust.TrustRatioState


def scale_by_lans(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    exclude: masks.Exclude = None,
) -> optax.GradientTransformation:
  """g -> b1*phi_r*r + (1-b1)*phi_c*c per tensor (the LANS direction, before the LR).

  With t the 1-based update number, per tensor:
    g~ = g / (||g|| + eps)                       (g~ = g when ||g|| = 0)
    m <- b1*m + (1-b1)*g~;  v <- b2*v + (1-b2)*g~^2
    d = sqrt(v / (1-b2^t)) + eps
    r = (m / (1-b1^t)) / d + beta*w;  c = g~ / d + beta*w
    phi_r = ||w|| / ||r||,  phi_c = ||w|| / ||c||  (1 when a norm is 0)
  Excluded tensors: no decay term and phi_r = phi_c = 1; their gradient is
  still normalised, as the kernel does for every tensor it is given.

  References:
    Zheng, Lin, Zha, Li, "Accelerated Large Batch Optimization of BERT
    Pretraining in 54 minutes", 2020, https://arxiv.org/abs/2006.13484 ;
    dmlc/gluon-nlp src/gluonnlp/torch/clib/multi_tensor_lans.cu (decoupled
    mode, bias correction on, gradient averaging on).
  """
  mask_fn = masks.decay_and_trust_mask(exclude)

  def init_fn(params):
    mask = mask_fn(params)
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    return ScaleByLansState(
        count=jnp.zeros([], jnp.int32), mu=zeros(), nu=zeros(),
        trust_ratio=trust.init_state(params, mask),
        current_trust_ratio=trust.init_state(params, mask))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(optax.NO_PARAMS_MSG)
    count = optax.safe_increment(state.count)
    leaves, treedef = jax.tree_util.tree_flatten(updates)
    flat = lambda tree: treedef.flatten_up_to(tree)
    out = {k: [] for k in ("u", "mu", "nu", "ratio", "current_ratio")}
    for g, w, m, v, adapted in zip(leaves, flat(params), flat(state.mu),
                                   flat(state.nu), flat(mask_fn(params))):
      w = w.astype(g.dtype)
      t = count.astype(jnp.promote_types(g.dtype, jnp.float32))
      g_norm = trust.norm(g)
      g = jnp.where(g_norm > 0, g / (g_norm + eps).astype(g.dtype), g)
      m = b1 * m + (1 - b1) * g
      v = b2 * v + (1 - b2) * g * g
      denom = jnp.sqrt(v / (1 - b2 ** t).astype(v.dtype)) + eps
      r = (m / (1 - b1 ** t).astype(m.dtype)) / denom
      c = g / denom
      if adapted:
        r, c = r + weight_decay * w, c + weight_decay * w
        w_norm, r_norm, c_norm = trust.norm(w), trust.norm(r), trust.norm(c)
        ratio = trust.safe_ratio(w_norm, r_norm, w_norm, r_norm)
        current_ratio = trust.safe_ratio(w_norm, c_norm, w_norm, c_norm)
        u = (b1 * ratio.astype(g.dtype) * r
             + (1 - b1) * current_ratio.astype(g.dtype) * c)
        out["ratio"].append(ratio.astype(jnp.float32))
        out["current_ratio"].append(current_ratio.astype(jnp.float32))
      else:
        u = b1 * r + (1 - b1) * c
        out["ratio"].append(optax.MaskedNode())
        out["current_ratio"].append(optax.MaskedNode())
      for key, value in (("u", u), ("mu", m), ("nu", v)):
        out[key].append(value.astype(g.dtype))
    tree = lambda key: treedef.unflatten(out[key])
    return tree("u"), ScaleByLansState(
        count=count, mu=tree("mu"), nu=tree("nu"),
        trust_ratio=trust.TrustRatioState(tree("ratio")),
        current_trust_ratio=trust.TrustRatioState(tree("current_ratio")))

  return optax.GradientTransformation(init_fn, update_fn)


@OPTIMIZERS.register("lans")
def lans(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    exclude: masks.Exclude = None,
) -> optax.GradientTransformation:
  """LANS with excluded tensors neither decayed nor layer-adapted (as in `lamb`).

    w <- w - gamma_t * (b1*phi_r*r + (1-b1)*phi_c*c)

  with r, c, phi_r, phi_c as in `scale_by_lans` and gamma_t = learning_rate(t - 1).
  Decay is decoupled (added after the moments, inside both trust ratios, scaled
  by gamma_t and by the ratio). Chain: scale_by_lans, scale_by_learning_rate.

  Args:
    learning_rate: float or optax schedule of the 0-based update count.
    b1, b2: moment decay rates; b1 also weights the two directions.
    eps: added to the gradient norm and outside the square root (kernel: both).
    weight_decay: beta, decoupled decay coefficient (the paper used 0.01).
    exclude: None (ndim <= 1) or regexes on 'Layer/param' paths; see masks.py.

  References:
    Zheng, Lin, Zha, Li, "Accelerated Large Batch Optimization of BERT
    Pretraining in 54 minutes", 2020, https://arxiv.org/abs/2006.13484
  """
  return optax.chain(
      scale_by_lans(b1, b2, eps, weight_decay, exclude),
      optax.scale_by_learning_rate(learning_rate),
  )
