"""RMSProp: optax's, with coupled L2 decay on non-excluded tensors."""

from typing import Optional

import optax

from lbt.optim import masks
from lbt.optim.factory import OPTIMIZERS


@OPTIMIZERS.register("rmsprop")
def rmsprop(
    learning_rate: optax.ScalarOrSchedule,
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    centered: bool = False,
    momentum: Optional[float] = None,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    exclude: masks.Exclude = None,
) -> optax.GradientTransformation:
  """optax.rmsprop on d = g + beta*w (excluded: d = g).

    s <- decay*s + (1-decay)*d^2 (s_0 = initial_scale);
    w <- w - gamma_t * d / sqrt(s + eps)  (centered: s - mean^2; momentum:
    optax.trace after the learning rate).

  Chain: add_decayed_weights (coupled L2), optax.rmsprop. Defaults are optax
  0.2.8's (eps inside the square root, no bias correction).

  Args:
    learning_rate: float or optax schedule of the 0-based update count.
    decay: second-moment decay. eps: added inside the square root.
    initial_scale: s_0. centered: subtract the squared first moment.
    momentum: None for no momentum, else the trace coefficient.
    nesterov: Nesterov form of that momentum.
    weight_decay: beta, L2 coefficient.
    exclude: None (ndim <= 1) or regexes on 'Layer/param' paths; see masks.py.

  References:
    Tieleman, Hinton, Lecture 6.5 - RMSProp, COURSERA 2012.
  """
  return optax.chain(
      masks.add_decayed_weights(weight_decay, exclude),
      optax.rmsprop(learning_rate, decay=decay, eps=eps,
                    initial_scale=initial_scale, centered=centered,
                    momentum=momentum, nesterov=nesterov),
  )
