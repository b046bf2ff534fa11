"""Adam with coupled L2 decay (the decay goes through the moments)."""

import optax

from lbt.optim import masks
from lbt.optim.factory import OPTIMIZERS


@OPTIMIZERS.register("adam")
def adam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    exclude: masks.Exclude = None,
) -> optax.GradientTransformation:
  """Adam on d = g + beta*w (excluded: d = g), t the 1-based update number.

    m <- b1*m + (1-b1)*d;  v <- b2*v + (1-b2)*d^2
    w <- w - gamma_t * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)

  Chain: add_decayed_weights (coupled L2: normalised by sqrt(v) like the
  gradient, which is why adamw exists), scale_by_adam, scale_by_learning_rate.

  Args:
    learning_rate: float or optax schedule of the 0-based update count.
    b1, b2: moment decay rates. eps: added outside the square root.
    weight_decay: beta, L2 coefficient.
    exclude: None (ndim <= 1) or regexes on 'Layer/param' paths; see masks.py.

  References:
    Kingma, Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015,
    https://arxiv.org/abs/1412.6980
  """
  return optax.chain(
      masks.add_decayed_weights(weight_decay, exclude),
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
      optax.scale_by_learning_rate(learning_rate),
  )
