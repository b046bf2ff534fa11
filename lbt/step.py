"""The pure train and eval steps: state in, state out, no side effects.

`train_step` computes one optimizer update of the global batch. When the batch
is larger than the microbatch, the gradient is accumulated over microbatches
with `lax.scan`, so memory is set by the microbatch, not by the batch.
Microbatch k takes every n-th example starting at k (n = number of
microbatches); because each device holds a contiguous block of the batch, every
microbatch is spread evenly over the devices and its composition does not
depend on the device count.

BatchNorm statistics come from each microbatch as a whole (a cross-device
statistic under jit), or from its ghost batches when the model was built with
`ghost_size`. Running statistics are updated once per microbatch.
"""

from typing import Any, Callable, Dict, Tuple

import flax
import jax
import jax.numpy as jnp
import optax

from lbt import optim

Metrics = Dict[str, jax.Array]


class TrainState(flax.struct.PyTreeNode):
  """Everything an update reads and writes; checkpointed as one pytree.

  Attributes:
    step: updates applied so far (int32).
    params: model parameters.
    batch_stats: BatchNorm running statistics.
    opt_state: optimizer state.
    rng: key for stochastic layers and augmentation, folded with `step`.
    diverged: set by the first update whose loss, gradient or new parameters
      are not finite; that update and every later one leave the state as it
      was, so the host can stop at its next look without the state moving on.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  diverged: jax.Array


def create_train_state(rng: jax.Array, model, tx: optax.GradientTransformation,
                       input_shape: Tuple[int, ...]) -> TrainState:
  """Initializes parameters (from `rng`) and the optimizer state."""
  init_rng, state_rng = jax.random.split(rng)
  variables = model.init(init_rng, jnp.zeros((1,) + tuple(input_shape)), train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params), rng=state_rng,
                    diverged=jnp.zeros([], jnp.bool_))


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  label_smoothing: float) -> jax.Array:
  """Per-example softmax cross-entropy against (optionally smoothed) labels.

  References:
    Szegedy et al. 2016, "Rethinking the Inception Architecture", §7 (label
    smoothing): targets (1 - s) * one_hot + s / num_classes.
  """
  targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def tree_norm(tree) -> jax.Array:
  return optax.tree.norm(jax.tree.map(lambda x: x.astype(jnp.float32), tree))


def split_microbatches(batch, num_microbatches: int):
  """(B, ...) -> (n, B/n, ...) with microbatch k = examples k, k+n, k+2n, ..."""
  def split(x):
    x = x.reshape((x.shape[0] // num_microbatches, num_microbatches) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def train_step(state: TrainState, batch: Dict[str, jax.Array], params_init, *,
               apply_fn: Callable, tx: optax.GradientTransformation,
               schedule: optax.Schedule, num_microbatches: int,
               label_smoothing: float) -> Tuple[TrainState, Metrics]:
  """One optimizer update on a global batch.

  Args:
    state: the current TrainState.
    batch: {'image': (B, H, W, C) float, 'label': (B,) int}.
    params_init: the parameters at initialization, for ‖w_t − w_0‖.
    apply_fn: the model's `apply`.
    tx: the optimizer.
    schedule: the learning-rate schedule inside `tx`, for logging.
    num_microbatches: B / microbatch size; 1 means no accumulation.
    label_smoothing: of the cross-entropy targets.

  Returns:
    The new state and this update's metrics (scalars).
  """
  dropout_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params, batch_stats, microbatch):
    logits, updates = apply_fn(
        {"params": params, "batch_stats": batch_stats}, microbatch["image"],
        train=True, mutable=["batch_stats"], rngs={"dropout": dropout_rng})
    losses = cross_entropy(logits, microbatch["label"], label_smoothing)
    correct = jnp.sum(jnp.argmax(logits, -1) == microbatch["label"])
    return jnp.mean(losses), (updates["batch_stats"], correct)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def accumulate(carry, microbatch):
    grad_sum, batch_stats, loss_sum, correct_sum = carry
    (loss, (batch_stats, correct)), grads = grad_fn(state.params, batch_stats,
                                                    microbatch)
    grad_sum = jax.tree.map(lambda s, g: s + g.astype(jnp.float32), grad_sum, grads)
    return (grad_sum, batch_stats, loss_sum + loss, correct_sum + correct), None

  if num_microbatches == 1:
    (loss, (batch_stats, correct)), grads = grad_fn(state.params, state.batch_stats,
                                                    batch)
  else:
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
    init = (zeros, state.batch_stats, jnp.zeros([], jnp.float32),
            jnp.zeros([], jnp.int32))
    (grad_sum, batch_stats, loss_sum, correct), _ = jax.lax.scan(
        accumulate, init, split_microbatches(batch, num_microbatches))
    grads = jax.tree.map(lambda g, p: (g / num_microbatches).astype(p.dtype),
                         grad_sum, state.params)
    loss = loss_sum / num_microbatches

  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)

  grad_norm, param_norm = tree_norm(grads), tree_norm(params)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(param_norm)
  ok = finite & ~state.diverged
  candidate = state.replace(step=state.step + 1, params=params,
                            batch_stats=batch_stats, opt_state=opt_state)
  new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), candidate, state)
  new_state = new_state.replace(diverged=~ok)

  metrics = {
      "loss": loss,
      "accuracy": correct / batch["label"].shape[0],
      "learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
      "grad_norm": grad_norm,
      "param_norm": param_norm,
      "update_norm": tree_norm(updates),
      "distance_from_init": tree_norm(
          jax.tree.map(lambda w, w0: w - w0, params, params_init)),
      "finite": finite,
      **optim.trust_ratio_stats(opt_state),
  }
  return new_state, metrics


def eval_step(state: TrainState, batch: Dict[str, jax.Array], *,
              apply_fn: Callable) -> Metrics:
  """Summed loss and correct predictions over the unmasked examples of a batch."""
  logits = apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                    batch["image"], train=False)
  losses = cross_entropy(logits, batch["label"], 0.0)
  mask = batch["mask"]
  return {"loss_sum": jnp.sum(losses * mask),
          "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
          "count": jnp.sum(mask)}
