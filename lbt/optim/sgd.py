"""SGD, heavy-ball momentum and Nesterov momentum with coupled L2 decay.

The Goyal et al. baseline that LARS is compared against. optax.sgd has the
exact rule, so these are optax.sgd behind a masked add_decayed_weights.
"""

import optax

from lbt.optim import masks
from lbt.optim.factory import OPTIMIZERS


def _sgd(learning_rate, momentum, nesterov, weight_decay, exclude):
  # Decay before momentum: the L2 term is part of the gradient, so it is
  # accumulated in the velocity like the loss gradient (init2winit's choice).
  return optax.chain(
      masks.add_decayed_weights(weight_decay, exclude),
      optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
  )


@OPTIMIZERS.register("sgd")
def sgd(
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: float = 0.0,
    exclude: masks.Exclude = None,
) -> optax.GradientTransformation:
  """Plain SGD: w <- w - gamma_t * (g + beta*w) (decay on non-excluded tensors).

  Chain: add_decayed_weights (coupled L2, scaled by gamma_t), scale_by_learning_rate.

  Args:
    learning_rate: float or optax schedule of the 0-based update count.
    weight_decay: beta, L2 coefficient.
    exclude: None (ndim <= 1) or regexes on 'Layer/param' paths; see masks.py.
  """
  return _sgd(learning_rate, None, False, weight_decay, exclude)


@OPTIMIZERS.register("momentum")
def momentum(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.9,  # pylint: disable=redefined-outer-name
    weight_decay: float = 0.0,
    exclude: masks.Exclude = None,
) -> optax.GradientTransformation:
  """Heavy ball, learning rate outside the buffer.

    d = g + beta*w (excluded: d = g);  v <- m*v + d;  w <- w - gamma_t * v

  Chain: add_decayed_weights (coupled L2, inside the momentum, scaled by
  gamma_t), trace, scale_by_learning_rate. With the LR outside, a schedule
  change rescales the whole velocity at once (unlike LARS).

  Args:
    learning_rate: float or optax schedule of the 0-based update count.
    momentum: m (default 0.9, Goyal et al.).
    weight_decay: beta, L2 coefficient.
    exclude: None (ndim <= 1) or regexes on 'Layer/param' paths; see masks.py.

  References:
    Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour",
    2017, https://arxiv.org/abs/1706.02677
  """
  return _sgd(learning_rate, momentum, False, weight_decay, exclude)


@OPTIMIZERS.register("nesterov")
def nesterov(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.9,  # pylint: disable=redefined-outer-name
    weight_decay: float = 0.0,
    exclude: masks.Exclude = None,
) -> optax.GradientTransformation:
  """Nesterov momentum, learning rate outside the buffer.

    d = g + beta*w (excluded: d = g);  v <- m*v + d;  w <- w - gamma_t * (d + m*v)

  Chain: add_decayed_weights (coupled L2, scaled by gamma_t),
  trace(nesterov=True), scale_by_learning_rate. MLPerf's ResNet-50 fallback
  when LARS is off.

  Args:
    learning_rate: float or optax schedule of the 0-based update count.
    momentum: m (default 0.9).
    weight_decay: beta, L2 coefficient.
    exclude: None (ndim <= 1) or regexes on 'Layer/param' paths; see masks.py.

  References:
    Sutskever et al., "On the importance of initialization and momentum in
    deep learning", ICML 2013.
  """
  return _sgd(learning_rate, momentum, True, weight_decay, exclude)
