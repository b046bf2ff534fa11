"""LAMB as published: Adam direction plus decoupled decay, scaled per layer.

optax.lamb applies the trust ratio to every tensor, so biases and BatchNorm
parameters are layer-adapted even when they are excluded from weight decay;
the paper and its TF-addons reference exclude them from both.
"""

import optax

from lbt.optim import masks
from lbt.optim import trust
from lbt.optim.factory import OPTIMIZERS


def scale_by_lamb_trust_ratio(exclude: masks.Exclude = None
                             ) -> optax.GradientTransformation:
  """u -> (||w|| / ||u||) * u on adapted tensors; excluded tensors unchanged.

  optax.scale_by_trust_ratio (coefficient 1, eps 0, no clamp, as in
  TF-addons) does the scaling, ratio exactly 1 when ||w|| or ||u|| is 0; the
  same ratio is kept in a TrustRatioState for `trust_ratio_stats`.

  References:
    You et al., "Large Batch Optimization for Deep Learning: Training BERT in
    76 minutes", ICLR 2020, Algorithm 2, https://arxiv.org/abs/1904.00962
  """

  def record(u, w):
    w_norm, u_norm = trust.norm(w), trust.norm(u)
    return u, trust.safe_ratio(w_norm, u_norm, w_norm, u_norm)

  return trust.layerwise(record, masks.decay_and_trust_mask(exclude),
                         optax.scale_by_trust_ratio())


@OPTIMIZERS.register("lamb")
def lamb(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    exclude: masks.Exclude = None,
) -> optax.GradientTransformation:
  """LAMB (Algorithm 2) with excluded tensors neither decayed nor adapted.

  With t the 1-based update number and gamma_t = learning_rate(t - 1):
    m <- b1*m + (1-b1)*g;  v <- b2*v + (1-b2)*g^2
    r = (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
    u = r + beta*w                      (excluded: u = r)
    w <- w - gamma_t * (||w|| / ||u||) * u   (ratio 1 if a norm is 0 or excluded)

  Chain: scale_by_adam, add_decayed_weights (decoupled from the moments,
  inside the trust ratio, scaled by gamma_t), scale_by_lamb_trust_ratio,
  scale_by_learning_rate.

  Args:
    learning_rate: float or optax schedule of the 0-based update count.
    b1, b2: moment decay rates. eps: added outside the square root.
    weight_decay: beta, decoupled decay coefficient.
    exclude: None (ndim <= 1) or regexes on 'Layer/param' paths; see masks.py.

  References:
    You et al., "Large Batch Optimization for Deep Learning: Training BERT in
    76 minutes", ICLR 2020, https://arxiv.org/abs/1904.00962 ;
    tensorflow/addons optimizers/lamb.py (defaults b1 .9, b2 .999, eps 1e-6).
  """
  return optax.chain(
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
      masks.add_decayed_weights(weight_decay, exclude),
      scale_by_lamb_trust_ratio(exclude),
      optax.scale_by_learning_rate(learning_rate),
  )
