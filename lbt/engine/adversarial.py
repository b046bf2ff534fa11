"""ConAdv's adversarial examples and the clean + adversarial loss, as pure functions.

Adversarial training smooths the loss around the training points and biases
large-batch training towards flat minima, but it needs the input gradient
before the parameter gradient: two sequential passes per update. ConAdv (Liu
et al. 2022) builds the examples with the parameters of the previous update
("stale", one update old), so that on a pod the input gradient of batch t+1 is
computed concurrently with the parameter gradient of batch t. Here the train
step chooses the parameters it passes: the previous update's for "stale", the
current ones for "fresh" (classic sequential adversarial training).

Cost (what the lead's step should report): each sign step is one forward and
one backward pass with respect to the inputs, and the adversarial loss is one
more forward/backward with respect to the parameters, so one update costs
(2 + num_steps) passes instead of 1 on a single device; "stale" also keeps one
extra copy of the parameters in the train state.

Where the paper's details were not retrievable here (only its abstract and
introduction), the choices are stated: the perturbation is a sum of sign steps
projected onto the L-infinity ball of radius `epsilon` around the clean input
(FGSM when num_steps = 1 and step_size = epsilon, PGD otherwise; Goodfellow et
al. 2015, Madry et al. 2018), with no clipping to a pixel range because lbt's
inputs are standardised; and the update minimises
(1 - adversarial_weight) * L(w; x) + adversarial_weight * L(w; x_adv), whose
default 0.5 is the mean loss over the clean and adversarial halves of a doubled
batch.

References:
  Liu, Chen, Cheng, Hsieh, You, "Concurrent Adversarial Learning for
  Large-Batch Training", ICLR 2022, https://arxiv.org/abs/2106.00221 ;
  Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial
  Examples", ICLR 2015 ; Madry et al., "Towards Deep Learning Models Resistant
  to Adversarial Attacks", ICLR 2018.
"""

import math
import numbers
from typing import Any, Callable, Dict, Mapping, Optional

import jax
import jax.numpy as jnp

from lbt.errors import ConfigError

# loss_fn(params, inputs, labels) -> scalar mean loss over the batch.
LossFn = Callable[[Any, jax.Array, jax.Array], jax.Array]
PARAMETERS = ("stale", "fresh")
# What a `loss.adversarial` section's absent keys mean (the others are required).
DEFAULTS = {"enabled": False, "epsilon": None, "weight": 0.5}


def adversarial_examples(loss_fn: LossFn, params, inputs: jax.Array,
                         labels: jax.Array, *, step_size: float, num_steps: int,
                         epsilon: Optional[float] = None) -> jax.Array:
  """x_adv after num_steps sign-gradient ascent steps on loss_fn(params, ., labels).

    x_0 = x;  x_{s+1} = clip(x_s + step_size * sign(grad_x L(params; x_s, y)),
                             x - epsilon, x + epsilon)

  epsilon None means no projection (num_steps * step_size bounds the distance
  anyway). `params` are held fixed (stale or fresh: the caller decides), and
  the result carries no gradient to them: adversarial training treats x_adv as
  data. The steps run in a lax.fori_loop, so the traced size does not grow
  with num_steps.
  """
  grad_x = jax.grad(lambda x: loss_fn(params, x, labels))
  lower = upper = None
  if epsilon is not None:
    lower, upper = inputs - epsilon, inputs + epsilon

  def sign_step(_, x):
    x = x + step_size * jnp.sign(grad_x(x)).astype(x.dtype)
    return x if epsilon is None else jnp.clip(x, lower, upper)

  adv = jax.lax.fori_loop(0, num_steps, sign_step, inputs)
  return jax.lax.stop_gradient(adv)


def combined_loss(loss_fn: LossFn, params, inputs: jax.Array,
                  adversarial_inputs: jax.Array, labels: jax.Array,
                  adversarial_weight: float = 0.5) -> jax.Array:
  """(1 - a) * L(params; x, y) + a * L(params; x_adv, y), a = adversarial_weight."""
  clean = loss_fn(params, inputs, labels)
  adversarial = loss_fn(params, adversarial_inputs, labels)
  return (1 - adversarial_weight) * clean + adversarial_weight * adversarial


def check(section: Mapping) -> Dict[str, Any]:
  """The `loss.adversarial` section with its DEFAULTS filled in, the one
  place they are applied; ConfigError for a bad one, before any compute.

  Keys: enabled (bool), step_size (> 0), num_steps (int >= 1), epsilon (> 0,
  or None for no projection), parameters ('stale' or 'fresh'), weight (in
  [0, 1]). The values are checked even when enabled is False, so that turning
  the section on from the command line cannot reveal an old typo.
  """
  def number(key, value):
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
        or not math.isfinite(value)):
      raise ConfigError(f"loss.adversarial.{key}", value, "a finite number")

  allowed = ("enabled", "step_size", "num_steps", "epsilon", "parameters", "weight")
  for key in section.keys():
    if key not in allowed:
      raise ConfigError(f"loss.adversarial.{key}", section[key],
                        f"not a field lbt reads; allowed: {', '.join(allowed)}")
  get = lambda key, default=None: section[key] if key in section else DEFAULTS.get(key, default)
  if not isinstance(get("enabled", False), bool):
    raise ConfigError("loss.adversarial.enabled", get("enabled"), "True or False")
  step_size = get("step_size")
  number("step_size", step_size)
  if step_size <= 0:
    raise ConfigError("loss.adversarial.step_size", step_size, "a number > 0")
  num_steps = get("num_steps")
  if (isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral)
      or num_steps < 1):
    raise ConfigError("loss.adversarial.num_steps", num_steps, "an int >= 1")
  epsilon = get("epsilon")
  if epsilon is not None:
    number("epsilon", epsilon)
    if epsilon <= 0:
      raise ConfigError("loss.adversarial.epsilon", epsilon,
                        "a number > 0, or None for no projection")
  if get("parameters") not in PARAMETERS:
    raise ConfigError("loss.adversarial.parameters", get("parameters"),
                      f"one of {', '.join(PARAMETERS)}")
  weight = get("weight")
  number("weight", weight)
  if not 0 <= weight <= 1:
    raise ConfigError("loss.adversarial.weight", weight, "a number in [0, 1]")
  return {key: get(key) for key in allowed}
