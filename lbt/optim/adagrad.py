"""AdaGrad: optax's, with coupled L2 decay on non-excluded tensors."""

import optax

from lbt.optim import masks
from lbt.optim.factory import OPTIMIZERS


@OPTIMIZERS.register("adagrad")
def adagrad(
    learning_rate: optax.ScalarOrSchedule,
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
    weight_decay: float = 0.0,
    exclude: masks.Exclude = None,
) -> optax.GradientTransformation:
  """optax.adagrad on d = g + beta*w (excluded: d = g).

    s <- s + d^2 (s_0 = initial_accumulator_value);  w <- w - gamma_t * d / sqrt(s + eps)

  Chain: add_decayed_weights (coupled L2), optax.adagrad (accumulator,
  scale_by_learning_rate). Defaults are optax 0.2.8's.

  Args:
    learning_rate: float or optax schedule of the 0-based update count.
    initial_accumulator_value: s_0. eps: added inside the square root.
    weight_decay: beta, L2 coefficient.
    exclude: None (ndim <= 1) or regexes on 'Layer/param' paths; see masks.py.

  References:
    Duchi, Hazan, Singer, "Adaptive Subgradient Methods for Online Learning
    and Stochastic Optimization", JMLR 2011.
  """
  return optax.chain(
      masks.add_decayed_weights(weight_decay, exclude),
      optax.adagrad(learning_rate, initial_accumulator_value, eps),
  )
