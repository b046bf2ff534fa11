"""The gradient-norm penalty of full-batch training that generalizes, as pure functions.

SGD with step size η follows, to first order in η, gradient descent on the
loss plus an implicit penalty on the squared norms of its minibatch gradients
(Smith, Dherin, Barrett, De 2021). Geiping et al. (2022) make that penalty
explicit so that full-batch gradient descent generalizes like SGD: the batch
is cut into blocks of `block` examples (128 in their recipe, SGD's batch), and
the objective becomes

  L(θ) + λ/2 · mean_b ‖∇θ L_b(θ)‖²,

L the mean loss over the batch, L_b the mean loss over block b. Its gradient
adds λ · mean_b H_b ∇L_b, which they compute by forward finite differences.
Here it is exact (`penalty_gradient`: double backpropagation, forward over
reverse), with no finite-difference step to choose.

Their λ follows the learning rate: λ_t = α · η_t / 4 with α = 0.5 (the
`block_strength` of their `gradreg.yaml`; `GradRegularizer` adds
η_t/4 · α · H_b g_b to each block's gradient). `scale_by_learning_rate=True`
does the same: λ_t = strength · η_t, so strength = α / 4 = 0.125 is theirs.

Blocks are cut like ghost batches (lbt.models.norm.BatchNorm): block j of a
microbatch of m examples holds examples j, j + m/block, ..., so the blocks of
a batch are the same sets however it is cut into microbatches, and with
`bn.ghost_size == block` a block's BatchNorm statistics are those of its ghost
batch in the loss. Each block goes through the model in training mode on its
own (BatchNorm over the block; the running statistics it would move are
dropped). A padded microbatch's blocks weigh by their real examples.

References:
  Geiping, Goldblum, Pope, Moeller, Goldstein, "Stochastic Training is Not
  Necessary for Generalization", ICLR 2022, https://arxiv.org/abs/2109.14119 ;
  code: github.com/JonasGeiping/fullbatchtraining (config/hyp/gradreg.yaml,
  fullbatch/models/modules.py GradRegularizer) ;
  Smith, Dherin, Barrett, De, "On the Origin of Implicit Regularization in
  Stochastic Gradient Descent", ICLR 2021, https://arxiv.org/abs/2101.12176
"""

import math
import numbers
from typing import Any, Callable, Dict, Mapping, Optional

import jax
import jax.numpy as jnp

from lbt.errors import ConfigError

# What a `loss.gradient_penalty` section's absent keys mean.
DEFAULTS = {"strength": 0.0, "block": 128, "scale_by_learning_rate": False}
FIELDS = tuple(DEFAULTS)


def check(section: Mapping, *, microbatches: Optional[Mapping[int, int]] = None,
          ghost_size: int = 0, adversarial: bool = False) -> Optional[Dict[str, Any]]:
  """The `loss.gradient_penalty` section with DEFAULTS filled in; None when
  its strength is 0 (off). ConfigError naming the field, before any compute.

  Keys: strength (a number >= 0: λ, or λ per unit of learning rate), block
  (an int >= 1), scale_by_learning_rate (bool). When on, the block must
  divide every (padded) microbatch, `microbatches` {batch: microbatch}, so
  that each is cut into whole blocks; be a multiple of bn.ghost_size, since a
  block goes through BatchNorm on its own; and ConAdv (`adversarial`) must be
  off: the penalty is on the clean loss alone.
  """
  def fail(key, value, allowed):
    raise ConfigError("loss.gradient_penalty" + (f".{key}" if key else ""), value, allowed)

  for key in section.keys():
    if key not in FIELDS:
      fail(key, section[key], f"not a field lbt reads; allowed: {', '.join(FIELDS)}")
  filled = {key: section[key] if key in section else DEFAULTS[key] for key in FIELDS}
  strength, block = filled["strength"], filled["block"]
  if (isinstance(strength, bool) or not isinstance(strength, numbers.Real)
      or not math.isfinite(strength) or strength < 0):
    fail("strength", strength, "a finite number >= 0 (0: no penalty)")
  if isinstance(block, bool) or not isinstance(block, numbers.Integral) or block < 1:
    fail("block", block, "an int >= 1: the examples of one block")
  if not isinstance(filled["scale_by_learning_rate"], bool):
    fail("scale_by_learning_rate", filled["scale_by_learning_rate"], "True or False")
  if strength == 0:
    return None
  for batch, microbatch in sorted((microbatches or {}).items()):
    if microbatch % block:
      fail("block", block, f"a divisor of the microbatch ({microbatch} at batch {batch}): "
           "each microbatch is cut into whole blocks")
  if ghost_size and block % ghost_size:
    fail("block", block, f"a multiple of bn.ghost_size ({ghost_size}): each block goes "
         "through BatchNorm on its own")
  if adversarial:
    fail("", dict(section), "strength 0 or no section while loss.adversarial.enabled "
         "is True (the penalty is on the clean loss alone)")
  return {"strength": float(strength), "block": int(block),
          "scale_by_learning_rate": filled["scale_by_learning_rate"]}


def blocks(x: jax.Array, block: int) -> jax.Array:
  """(m, ...) -> (m / block, block, ...): block j holds examples j, j + m/block, ..."""
  count = x.shape[0] // block
  return jnp.swapaxes(x.reshape((block, count) + x.shape[1:]), 0, 1)


def penalty_gradient(apply_fn: Callable, params, batch_stats, microbatch, rng,
                     cross_entropy: Callable, label_smoothing: float, block: int):
  """∇θ of ½ Σ_b n_b ‖∇θ L_b‖² over one microbatch's blocks (a tree like params).

  Summed over blocks weighted by their real examples n_b, like the step's
  summed loss: the step divides by the batch's examples, which makes it the
  gradient of ½ mean_b ‖∇L_b‖² over the whole batch. Per block it is the
  Hessian-vector product H_b g_b (g_b = ∇L_b), exact: the forward-mode
  derivative of the reverse-mode gradient along g_b (`jax.jvp` of
  `jax.grad`), block after block in a `lax.scan`. On XLA:CPU that costs about
  one more gradient of the microbatch; `jax.grad` through `jax.vmap(jax.grad)`
  gives the same numbers (tests/studies/test_full_batch.py) 4-6x slower.
  """
  mask = microbatch.get("mask")
  weights = (jnp.ones(microbatch["label"].shape, jnp.float32) if mask is None
             else mask.astype(jnp.float32))

  def block_loss(p, images, labels, w):
    logits, _ = apply_fn({"params": p, "batch_stats": batch_stats}, images, train=True,
                         mutable=["batch_stats"], rngs={"dropout": rng},
                         **({} if mask is None else {"mask": w}))
    losses = cross_entropy(logits, labels, label_smoothing)
    return jnp.sum(losses * w) / jnp.maximum(jnp.sum(w), 1.0)

  def add_block(total, arrays):
    gradient = lambda p: jax.grad(block_loss)(p, *arrays)
    g = gradient(params)
    _, hessian_g = jax.jvp(gradient, (params,), (g,))
    count = jnp.sum(arrays[-1])
    return jax.tree.map(lambda t, h: t + count * h.astype(jnp.float32), total,
                        hessian_g), None

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  stacked = tuple(blocks(a, block) for a in (microbatch["image"], microbatch["label"],
                                              weights))
  total, _ = jax.lax.scan(add_block, zeros, stacked)
  return total


def coefficient(section: Mapping[str, Any], learning_rate) -> jax.Array:
  """λ of this update: strength, times its learning rate when scaled by it."""
  strength = jnp.asarray(section["strength"], jnp.float32)
  if section["scale_by_learning_rate"]:
    return strength * jnp.asarray(learning_rate, jnp.float32)
  return strength
