"""lbt's compiled train step against the minimal step flax's ImageNet example writes.

  python benchmarks/step_vs_baseline.py [--rounds=7] [--models=lenet5,mlp,...]

The baseline is written here the way google/flax examples/imagenet/train.py
writes `train_step` (a `TrainState` with `batch_stats`, `value_and_grad` of the
mean cross-entropy, `apply_gradients`, loss and accuracy as metrics), jitted
with the state donated. Both sides get the same model object, the same optax
transformation (lbt's momentum, weight decay inside), the same batch and dtype,
and no accumulation; lbt's side is `lbt.programs.compile_update` with one
microbatch, i.e. the program a run executes. Calls are interleaved and the
medians compared: the goal is lbt / baseline <= 1.02.

lbt's step also computes diagnostics on every update (gradient, parameter and
update norms, the distance from init, trust ratios, the finite check). Their
own cost is timed separately as one jitted function on the model's parameter
tree, and reported per update and amortised over a logging period of k = 50.
"""

import argparse
import functools
import os
import sys
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax.training import train_state  # noqa: E402

from benchmarks import timing  # noqa: E402
from lbt import models, optim, parallel, programs, step  # noqa: E402

# (model, batch, image side, channels): the CIFAR/ImageNet ResNets at a small
# image size, so that a CPU round takes seconds.
CASES = (("lenet5", 256, 28, 1), ("lenet5", 4096, 28, 1), ("mlp", 256, 28, 1),
         ("mlp", 4096, 28, 1), ("resnet20", 256, 32, 3), ("resnet18", 32, 32, 3),
         ("resnet50", 16, 32, 3))
LOG_EVERY = 50


class BaselineState(train_state.TrainState):
  batch_stats: Any


def baseline_step(state: BaselineState, batch, num_classes: int):
  """flax's ImageNet example's train_step, without its hidden weight decay
  (the optax transformation carries it, on both sides)."""
  def loss_fn(params):
    logits, new_model_state = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, batch["image"],
        train=True, mutable=["batch_stats"])
    one_hot = jax.nn.one_hot(batch["label"], num_classes)
    loss = jnp.mean(optax.softmax_cross_entropy(logits, one_hot))
    return loss, (new_model_state, logits)

  (loss, (new_model_state, logits)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads,
                                    batch_stats=new_model_state["batch_stats"])
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
  return new_state, {"loss": loss, "accuracy": accuracy}


def diagnostics(params, grads, updates, params_init):
  """The norms lbt's step adds to every update (see lbt.step.finish_update)."""
  new = optax.apply_updates(params, updates)
  return {"grad_norm": step.tree_norm(grads), "param_norm": step.tree_norm(new),
          "update_norm": step.tree_norm(updates),
          "distance_from_init": step.tree_norm(
              jax.tree.map(lambda w, w0: w - w0, new, params_init))}


def measure(name: str, batch_size: int, side: int, channels: int, rounds: int) -> dict:
  mesh = parallel.create_mesh()
  model = models.create(name, num_classes=10)
  tx = optim.create_by_name("momentum", 0.01, weight_decay=5e-4)  # the baseline's
  # lbt's: the learning rate in the optimizer state, set by the step (one route).
  lbt_tx = optax.inject_hyperparams(lambda learning_rate: optim.create_by_name(
      "momentum", learning_rate, weight_decay=5e-4))(learning_rate=0.01)
  rng = np.random.default_rng(0)
  batch = parallel.to_global({
      "image": rng.normal(size=(batch_size, side, side, channels)).astype(np.float32),
      "label": rng.integers(0, 10, batch_size).astype(np.int32)}, mesh)

  init = jax.jit(functools.partial(step.create_train_state, model=model, tx=lbt_tx,
                                   input_shape=(side, side, channels)),
                 out_shardings=parallel.replicated(mesh))
  lbt_state = [init(jax.random.PRNGKey(0))]
  params_init = init(jax.random.PRNGKey(0)).params
  update = programs.compile_update(model, lbt_tx, lambda count: 0.01, mesh, 1, 0.0)

  fresh = init(jax.random.PRNGKey(0))
  base_state = [BaselineState.create(apply_fn=model.apply, params=fresh.params, tx=tx,
                                     batch_stats=fresh.batch_stats)]
  base = jax.jit(functools.partial(baseline_step, num_classes=10), donate_argnums=(0,))

  def run_lbt():
    lbt_state[0], metrics = update(lbt_state[0], [batch], params_init, 0.0)
    return lbt_state[0], metrics

  def run_baseline():
    base_state[0], metrics = base(base_state[0], batch)
    return base_state[0], metrics

  params = init(jax.random.PRNGKey(1)).params  # `fresh`'s are donated
  grads = jax.tree.map(lambda p: 1e-3 * jnp.ones_like(p), params)
  diag = jax.jit(diagnostics)
  times = timing.interleaved({"lbt": run_lbt, "baseline": run_baseline,
                              "diagnostics": lambda: diag(params, grads, grads, params_init)},
                             rounds)
  return {"model": name, "batch": batch_size, "image": f"{side}x{side}x{channels}",
          "lbt_ms": 1e3 * times["lbt"], "baseline_ms": 1e3 * times["baseline"],
          "ratio": times["lbt"] / times["baseline"], "diag_ms": 1e3 * times["diagnostics"]}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--models", default=",".join(sorted({c[0] for c in CASES})))
  args = parser.parse_args()
  wanted = args.models.split(",")
  print(f"step vs flax-example baseline: {timing.machine()}; medians of "
        f"{args.rounds} interleaved rounds")
  print("| model | batch | image | lbt ms | baseline ms | lbt / baseline | "
        f"diagnostics ms | diagnostics % every update | % every {LOG_EVERY} |")
  print("|---|---|---|---|---|---|---|---|---|")
  for name, batch_size, side, channels in CASES:
    if name not in wanted:
      continue
    r = measure(name, batch_size, side, channels, args.rounds)
    share = 100 * r["diag_ms"] / r["lbt_ms"]
    print(f"| {r['model']} | {r['batch']} | {r['image']} | {r['lbt_ms']:.2f} | "
          f"{r['baseline_ms']:.2f} | {r['ratio']:.3f} | {r['diag_ms']:.3f} | "
          f"{share:.1f} | {share / LOG_EVERY:.2f} |", flush=True)


if __name__ == "__main__":
  main()
