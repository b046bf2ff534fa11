"""AdamW: Adam with decoupled weight decay."""

import optax

from lbt.optim import masks
from lbt.optim.factory import OPTIMIZERS


@OPTIMIZERS.register("adamw")
def adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    exclude: masks.Exclude = None,
) -> optax.GradientTransformation:
  """Adam on g, then decay added to the direction, t the 1-based update number.

    m <- b1*m + (1-b1)*g;  v <- b2*v + (1-b2)*g^2
    w <- w - gamma_t * ((m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps) + beta*w)
  (excluded tensors: no beta*w term).

  Chain: scale_by_adam, add_decayed_weights (decoupled from the moments,
  scaled by gamma_t, as in optax.adamw), scale_by_learning_rate. The default
  weight_decay is 0 (optax.adamw's is 1e-4) so that every decay is set in the
  config; with 0 this is Adam.

  Args:
    learning_rate: float or optax schedule of the 0-based update count.
    b1, b2: moment decay rates. eps: added outside the square root.
    weight_decay: beta, decoupled decay coefficient.
    exclude: None (ndim <= 1) or regexes on 'Layer/param' paths; see masks.py.

  References:
    Loshchilov, Hutter, "Decoupled Weight Decay Regularization", ICLR 2019,
    https://arxiv.org/abs/1711.05101
  """
  return optax.chain(
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
      masks.add_decayed_weights(weight_decay, exclude),
      optax.scale_by_learning_rate(learning_rate),
  )
