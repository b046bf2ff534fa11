"""The pure train and eval steps: state in, state out, no side effects.

One optimizer update is three pure functions, so that the loop can stream the
microbatches of a batch of any size through a device holding only one:

  start_update(state)                      -> GradientSum (zeros)
  add_microbatch(state, sums, microbatch)  -> GradientSum   (once per microbatch)
  finish_update(state, sums, params_init)  -> (state, metrics)

`train_step` composes the three for a batch given whole (one microbatch), so
that the one-shot update stays a single fused program. Gradients are summed
over examples and divided once by the example count at the end, which makes the
accumulated gradient the mean over the whole batch, whatever the microbatches.

BatchNorm statistics come from each microbatch as a whole (a cross-device
statistic under jit), or from its ghost batches when the model was built with
`ghost_size`; running statistics move once per microbatch.
"""

from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import optax

from lbt.engine import adversarial as conadv
from lbt.engine import regularizers
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
    previous_params: the parameters before the last update, kept only for
      ConAdv's stale adversarial examples (`loss.adversarial.parameters =
      'stale'`); else None.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  previous_params: Any = None


class GradientSum(flax.struct.PyTreeNode):
  """What the microbatches of one update add up to, before the optimizer sees it.

  Attributes:
    grads: sum over examples of the per-example loss gradient (float32).
    batch_stats: running BN statistics after the microbatches added so far.
    loss: sum over examples of the loss.
    correct: correctly classified examples.
    examples: examples added.
    microbatches: microbatches added.
    microbatch_grad_sq_norm: sum over microbatches of |g_k|^2, g_k being the
      mean gradient of microbatch k; with |G|^2 of the whole batch it gives the
      gradient noise scale (McCandlish et al. 2018, App. A) at no extra pass.
    microbatch_grad_sq: elementwise sum over microbatches of g_k^2, kept only
      for optimizers that need it (the GSNR family); else None.
    per_example_grad_norm: per tensor, the sum over examples of the
      per-example gradient norm, kept only for CLARS; else None.
    penalty_grads: the gradient of ½ Σ_b n_b ‖∇L_b‖² over the blocks added
      so far, kept only with `loss.gradient_penalty` (lbt.engine.regularizers),
      whose coefficient may follow the learning rate: so it is kept apart from
      `grads` until `finish_update` knows the update's rate; else None.
  """
  grads: Any
  batch_stats: Any
  loss: jax.Array
  correct: jax.Array
  examples: jax.Array
  microbatches: jax.Array
  microbatch_grad_sq_norm: jax.Array
  microbatch_grad_sq: Any = None
  per_example_grad_norm: Any = None
  penalty_grads: Any = None


def init_variables(rng: jax.Array, model, input_shape: Tuple[int, ...]):
  """(params, batch_stats, state rng) at initialization, from `rng`.

  A program of its own, apart from the optimizer's state: it depends only on
  the model, so the points of a study with one model share it (compiled once,
  then loaded from the persistent compilation cache).
  """
  init_rng, state_rng = jax.random.split(rng)
  variables = model.init(init_rng, jnp.zeros((1,) + tuple(input_shape)), train=False)
  return variables["params"], variables.get("batch_stats", {}), state_rng


def state_from_variables(params, batch_stats, rng: jax.Array,
                         tx: optax.GradientTransformation,
                         keep_previous_params: bool = False) -> TrainState:
  """The train state at update 0 around initialized variables."""
  return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                    batch_stats=batch_stats, opt_state=tx.init(params), rng=rng,
                    previous_params=(jax.tree.map(jnp.copy, params)
                                     if keep_previous_params else None))


def create_train_state(rng: jax.Array, model, tx: optax.GradientTransformation,
                       input_shape: Tuple[int, ...],
                       keep_previous_params: bool = False) -> TrainState:
  """Initializes parameters (from `rng`) and the optimizer state."""
  return state_from_variables(*init_variables(rng, model, input_shape), tx=tx,
                              keep_previous_params=keep_previous_params)


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


def mean_per_example_grad_norm(example_loss: Callable[..., jax.Array], params,
                               *batch: jax.Array):
  """The extra argument CLARS (lbt.optim.clars) needs, for one (micro)batch: a tree like params.

  Leaf = (1/B) sum_i ||grad_tensor example_loss(params, *example_i)||, with
  `example_loss` the loss of ONE example (batch arrays without their leading
  axis) and B the leading size of `batch`. jax.vmap materialises the B
  per-example gradients, so memory is B times the parameters: call it per
  microbatch and average the microbatches' results (equal sizes). A model with
  BatchNorm couples the examples; with it `example_loss` must use fixed
  statistics (per-example gradients are otherwise undefined).
  """
  grads = jax.vmap(jax.grad(example_loss), in_axes=(None,) + (0,) * len(batch))(
      params, *batch)

  def mean_norm(g):
    g = g.reshape(g.shape[0], -1).astype(jnp.promote_types(g.dtype, jnp.float32))
    return jnp.mean(jnp.sqrt(jnp.sum(g * g, axis=1)))

  return jax.tree.map(mean_norm, grads)


def start_update(state: TrainState, needs: Sequence[str] = (),
                 gradient_penalty: Optional[Mapping[str, Any]] = None) -> GradientSum:
  """Empty sums for a new update, carrying the state's BN statistics.

  `needs` names the statistics the optimizer asks for beyond the gradient
  (`optim.needs(...)`: 'microbatch_grad_sq', 'per_example_grad_norm');
  `gradient_penalty` (the filled `loss.gradient_penalty`, or None) adds the
  penalty's gradient sum.
  """
  zero = lambda dtype: jnp.zeros([], dtype)
  zeros_like_params = lambda shape: jax.tree.map(
      lambda p: jnp.zeros(shape(p), jnp.float32), state.params)
  return GradientSum(
      grads=zeros_like_params(jnp.shape), batch_stats=state.batch_stats,
      loss=zero(jnp.float32), correct=zero(jnp.int32), examples=zero(jnp.int32),
      microbatches=zero(jnp.int32), microbatch_grad_sq_norm=zero(jnp.float32),
      microbatch_grad_sq=(zeros_like_params(jnp.shape)
                          if "microbatch_grad_sq" in needs else None),
      per_example_grad_norm=(zeros_like_params(lambda p: ())
                             if "per_example_grad_norm" in needs else None),
      penalty_grads=zeros_like_params(jnp.shape) if gradient_penalty else None)


def per_example_grad_norm_sum(apply_fn: Callable, state: TrainState, batch_stats,
                              microbatch, label_smoothing: float):
  """Per tensor, the sum over the microbatch of each example's gradient norm.

  BatchNorm couples the examples of a batch, so a per-example gradient needs
  fixed statistics: each example is taken through the model in inference mode
  with the running statistics of this update. `jax.vmap` materialises one
  gradient per example (memory: microbatch x parameters, compute: about one
  more backward pass per example); only CLARS asks for it.
  """
  def example_loss(params, image, label, weight):
    logits = apply_fn({"params": params, "batch_stats": batch_stats}, image[None],
                      train=False)
    return weight * cross_entropy(logits, label[None], label_smoothing)[0]

  weights = microbatch.get("mask", jnp.ones(microbatch["label"].shape, jnp.float32))
  mean_norms = mean_per_example_grad_norm(
      example_loss, state.params, microbatch["image"], microbatch["label"], weights)
  count = microbatch["label"].shape[0]
  return jax.tree.map(lambda n: n * count, mean_norms)


def adversarial_inputs(apply_fn: Callable, state: TrainState, batch_stats,
                       microbatch, adversarial: Mapping[str, Any]) -> jax.Array:
  """ConAdv's adversarial examples of a microbatch (Liu et al. 2022).

  Built from the previous update's parameters ('stale', so on a pod their
  input gradient need not wait for this update's) or the current ones
  ('fresh'), with BN in training mode on the microbatch; the statistics this
  extra pass would move are discarded.
  """
  params = (state.previous_params if adversarial["parameters"] == "stale"
            else state.params)

  masked = {"mask": microbatch["mask"]} if "mask" in microbatch else {}

  def mean_loss(p, images, labels):
    logits, _ = apply_fn({"params": p, "batch_stats": batch_stats}, images,
                         train=True, mutable=["batch_stats"], **masked)
    return jnp.mean(cross_entropy(logits, labels, 0.0))

  return conadv.adversarial_examples(
      mean_loss, params, microbatch["image"], microbatch["label"],
      step_size=adversarial["step_size"], num_steps=adversarial["num_steps"],
      epsilon=adversarial["epsilon"])


def add_microbatch(state: TrainState, sums: GradientSum,
                   microbatch: Dict[str, jax.Array], *, apply_fn: Callable,
                   label_smoothing: float,
                   adversarial: Optional[Mapping[str, Any]] = None,
                   gradient_penalty: Optional[Mapping[str, Any]] = None) -> GradientSum:
  """Adds one microbatch's summed loss gradient (and what the optimizer needs
  besides, as `start_update` set up) to `sums`.

  Args:
    state: the state of this update (parameters are not changed here).
    sums: what earlier microbatches of the update added up to.
    microbatch: {'image': (m, H, W, C) float, 'label': (m,) int}.
    apply_fn: the model's `apply`.
    label_smoothing: of the cross-entropy targets.
    adversarial: the `loss.adversarial` section when ConAdv is on, else None:
      the loss is then (1 - a) * clean + a * adversarial, a = its `weight`.
    gradient_penalty: the filled `loss.gradient_penalty` when on, else None:
      the penalty's gradient over this microbatch's blocks is then added to
      `penalty_grads` (as `start_update` set up).
  """
  rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), sums.microbatches)
  adversarial_images = None
  if adversarial:
    adversarial_images = adversarial_inputs(apply_fn, state, sums.batch_stats,
                                            microbatch, adversarial)

  # A padded microbatch marks its real examples; padding gets no loss and no
  # BatchNorm weight, so the update is that of the real examples alone.
  mask = microbatch.get("mask")
  masked = {} if mask is None else {"mask": mask}
  weights = 1.0 if mask is None else mask

  def loss_fn(params):
    logits, updates = apply_fn(
        {"params": params, "batch_stats": sums.batch_stats}, microbatch["image"],
        train=True, mutable=["batch_stats"], rngs={"dropout": rng}, **masked)
    losses = cross_entropy(logits, microbatch["label"], label_smoothing)
    correct = jnp.sum((jnp.argmax(logits, -1) == microbatch["label"]) * weights
                      ).astype(jnp.int32)
    if adversarial_images is not None:
      adversarial_logits, _ = apply_fn(
          {"params": params, "batch_stats": sums.batch_stats}, adversarial_images,
          train=True, mutable=["batch_stats"], rngs={"dropout": rng}, **masked)
      weight = adversarial["weight"]
      losses = (1 - weight) * losses + weight * cross_entropy(
          adversarial_logits, microbatch["label"], label_smoothing)
    return jnp.sum(losses * weights), (updates["batch_stats"], correct)

  (loss, (batch_stats, correct)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  count = microbatch["label"].shape[0] if mask is None else jnp.sum(mask)
  grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
  grad_sq, norms = sums.microbatch_grad_sq, sums.per_example_grad_norm
  if grad_sq is not None:
    grad_sq = jax.tree.map(lambda s, g: s + jnp.square(g / count), grad_sq, grads)
  if norms is not None:
    norms = jax.tree.map(jnp.add, norms, per_example_grad_norm_sum(
        apply_fn, state, sums.batch_stats, microbatch, label_smoothing))
  penalty = sums.penalty_grads
  if penalty is not None:
    penalty = jax.tree.map(jnp.add, penalty, regularizers.penalty_gradient(
        apply_fn, state.params, sums.batch_stats, microbatch, rng, cross_entropy,
        label_smoothing, gradient_penalty["block"]))
  return GradientSum(
      grads=jax.tree.map(jnp.add, sums.grads, grads), batch_stats=batch_stats,
      loss=sums.loss + loss, correct=sums.correct + correct,
      examples=sums.examples + jnp.asarray(count, jnp.int32), microbatches=sums.microbatches + 1,
      microbatch_grad_sq_norm=sums.microbatch_grad_sq_norm
      + jnp.square(tree_norm(grads) / count),
      microbatch_grad_sq=grad_sq, per_example_grad_norm=norms, penalty_grads=penalty)


# Diagnostics computed only on the updates whose metrics are written in full
# (log, evaluation, checkpoint and last updates): each is a pass over the
# parameters, 13 % of a small MLP's step when computed at every update.
FULL_DIAGNOSTICS = ("param_norm", "update_norm", "distance_from_init",
                    "trust_ratio_min", "trust_ratio_mean", "trust_ratio_max")


def diagnostics(params, updates, params_init, opt_state, full: jax.Array) -> Metrics:
  """The norms of FULL_DIAGNOSTICS when `full` (a traced bool), else zeros.

  One compiled program serves both kinds of update (`lax.cond` runs only the
  branch taken), so that a run compiles its update once.
  """
  def measure():
    return {"param_norm": tree_norm(params), "update_norm": tree_norm(updates),
            "distance_from_init": tree_norm(
                jax.tree.map(lambda w, w0: w - w0, params, params_init)),
            **optim.trust_ratio_stats(opt_state)}

  shapes = jax.eval_shape(measure)
  return jax.lax.cond(full, measure,
                      lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))


def finish_update(state: TrainState, sums: GradientSum, params_init, learning_rate,
                  full_diagnostics=True, *, tx: optax.GradientTransformation,
                  num_microbatches: int = 1,
                  gradient_penalty: Optional[Mapping[str, Any]] = None
                  ) -> Tuple[TrainState, Metrics]:
  """Turns the summed gradient into one optimizer update and its metrics.

  `learning_rate` is this update's (a traced scalar, from the schedule's own
  program: `lbt.engine.programs.compile_update`), so that runs differing in their
  schedule share this program; `tx` is
  `optim.create_with_learning_rate_input`'s, which takes it from its state.
  `full_diagnostics` (a traced bool) adds FULL_DIAGNOSTICS to the metrics;
  without it they are zeros, and the loop writes them only where full.
  `num_microbatches` (static) is what optimizers of the GSNR family check.
  With `gradient_penalty`, the gradient is that of the loss plus
  λ/2 · mean_b ‖∇L_b‖², λ from the section and this update's learning rate;
  `grad_norm` stays the loss gradient's, `penalized_grad_norm` is the sum's.

  A non-finite loss or gradient (or, on a full update, parameter) is reported
  in `metrics['finite']`; the loop stops at its next look, before any save or
  evaluation, so such a state is never kept.
  """
  examples = sums.examples.astype(jnp.float32)
  microbatches = sums.microbatches.astype(jnp.float32)
  grads = jax.tree.map(lambda g, p: (g / examples).astype(p.dtype), sums.grads,
                       state.params)
  # The loss gradient's norm, comparable with the microbatches' (noise scale).
  grad_norm, penalized = tree_norm(grads), {}
  if sums.penalty_grads is not None:
    strength = regularizers.coefficient(gradient_penalty, learning_rate)
    grads = jax.tree.map(lambda g, q: g + (strength * q / examples).astype(g.dtype),
                         grads, sums.penalty_grads)
    penalized["penalized_grad_norm"] = tree_norm(grads)  # what a clip_norm sees
  extra = {}
  if sums.microbatch_grad_sq is not None:
    extra["microbatch_grad_sq"] = jax.tree.map(lambda s: s / microbatches,
                                               sums.microbatch_grad_sq)
    extra["num_microbatches"] = num_microbatches
  if sums.per_example_grad_norm is not None:
    extra["per_example_grad_norm"] = jax.tree.map(lambda s: s / examples,
                                                  sums.per_example_grad_norm)
  opt_state = optim.set_learning_rate(state.opt_state, learning_rate)
  updates, opt_state = tx.update(grads, opt_state, state.params, **extra)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(
      step=state.step + 1, params=params, batch_stats=sums.batch_stats,
      opt_state=opt_state,
      previous_params=None if state.previous_params is None else state.params)

  loss = sums.loss / examples
  full = diagnostics(params, updates, params_init, opt_state, full_diagnostics)
  metrics = {
      "loss": loss,
      "accuracy": sums.correct / examples,
      "learning_rate": jnp.asarray(learning_rate, jnp.float32),
      "grad_norm": grad_norm, **penalized,
      **full,
      "finite": (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
                 & jnp.isfinite(full["param_norm"])
                 & jnp.isfinite(penalized.get("penalized_grad_norm", 0.0))),
      "microbatch_grad_sq_norm": sums.microbatch_grad_sq_norm / microbatches,
  }
  return new_state, metrics


def train_step(state: TrainState, batch: Dict[str, jax.Array], params_init,
               learning_rate, full_diagnostics=True, *, apply_fn: Callable,
               tx: optax.GradientTransformation, label_smoothing: float,
               needs: Sequence[str] = (),
               adversarial: Optional[Mapping[str, Any]] = None,
               gradient_penalty: Optional[Mapping[str, Any]] = None
               ) -> Tuple[TrainState, Metrics]:
  """One optimizer update on a batch given whole (no accumulation).

  Args:
    state: the current TrainState.
    batch: {'image': (B, H, W, C) float, 'label': (B,) int}.
    params_init: the parameters at initialization, for ‖w_t − w_0‖.
    learning_rate: this update's (see `finish_update`).
    full_diagnostics: whether to compute FULL_DIAGNOSTICS (a traced bool).
    apply_fn: the model's `apply`.
    tx: the optimizer.
    label_smoothing: of the cross-entropy targets.
    needs: statistics the optimizer needs besides the gradient.
    adversarial: the `loss.adversarial` section when ConAdv is on, else None.
    gradient_penalty: the filled `loss.gradient_penalty` when on, else None.

  Returns:
    The new state and this update's metrics (scalars).
  """
  sums = add_microbatch(state, start_update(state, needs, gradient_penalty), batch,
                        apply_fn=apply_fn, label_smoothing=label_smoothing,
                        adversarial=adversarial, gradient_penalty=gradient_penalty)
  return finish_update(state, sums, params_init, learning_rate, full_diagnostics, tx=tx,
                       gradient_penalty=gradient_penalty)


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
