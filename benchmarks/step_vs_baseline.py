"""lbt's compiled train step against the minimal step flax's ImageNet example writes.

  python benchmarks/step_vs_baseline.py [--rounds=7] [--models=lenet5,mlp,...]
      [--code=DIR] [--json=FILE]

The baseline is written here the way google/flax examples/imagenet/train.py
writes `train_step` (a `TrainState` with `batch_stats`, `value_and_grad` of the
mean cross-entropy, `apply_gradients`, loss and accuracy as metrics), jitted
with the state donated. Both sides get the same model object, the same optax
transformation (lbt's momentum, weight decay inside), the same batch and dtype,
and no accumulation; lbt's side is `lbt.engine.programs.compile_update` with one
microbatch, i.e. the program a run executes. Calls are interleaved and the
medians compared: the goal is lbt / baseline <= 1.02.

lbt's step computes its full diagnostics (parameter and update norms, the
distance from init, trust ratios) only on the updates whose metrics are
written in full (`lbt.engine.step.FULL_DIAGNOSTICS`; every other update has the loss,
the gradient norm and the finite check). Both kinds are timed: "update" is an
ordinary one, "log update" one with the full set, and "per update at k = 50"
their mix over a logging period of 50. Code without the lean update (before
2026-12-05) computes the full set at every update: its two kinds are one.

`--code=DIR` imports lbt from another checkout (run_all.py's `--before=REV`);
`--json` writes the rows for run_all.py's before/after table.
"""

import argparse
import functools
import inspect
import json
import os
import sys
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CODE = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--code=")), REPO)
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.abspath(_CODE))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax.training import train_state  # noqa: E402

from benchmarks import timing  # noqa: E402
from lbt import models, optim
from lbt.engine import parallel, programs, step

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
  lean = "full_diagnostics" in inspect.signature(update).parameters

  fresh = init(jax.random.PRNGKey(0))
  base_state = [BaselineState.create(apply_fn=model.apply, params=fresh.params, tx=tx,
                                     batch_stats=fresh.batch_stats)]
  base = jax.jit(functools.partial(baseline_step, num_classes=10), donate_argnums=(0,))

  def run_lbt(full):
    kwargs = {"full_diagnostics": full} if lean else {}
    lbt_state[0], metrics = update(lbt_state[0], [batch], params_init, 0.0, **kwargs)
    return lbt_state[0], metrics

  def run_baseline():
    base_state[0], metrics = base(base_state[0], batch)
    return base_state[0], metrics

  calls = {"update": lambda: run_lbt(False), "baseline": run_baseline}
  if lean:
    calls["log update"] = lambda: run_lbt(True)
  times = timing.interleaved(calls, rounds)
  times.setdefault("log update", times["update"])
  mixed = ((LOG_EVERY - 1) * times["update"] + times["log update"]) / LOG_EVERY
  return {"model": name, "batch": batch_size, "image": f"{side}x{side}x{channels}",
          "update_ms": 1e3 * times["update"], "log_update_ms": 1e3 * times["log update"],
          "baseline_ms": 1e3 * times["baseline"],
          "ratio": times["update"] / times["baseline"],
          "log_ratio": times["log update"] / times["baseline"],
          "mixed_ratio": mixed / times["baseline"], "lean": lean}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--models", default=",".join(sorted({c[0] for c in CASES})))
  parser.add_argument("--code", default=REPO)
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  wanted = args.models.split(",")
  print(f"step vs flax-example baseline: {timing.machine()}; medians of "
        f"{args.rounds} interleaved rounds; code {os.path.abspath(args.code)}")
  print("| model | batch | image | update ms | log update ms | baseline ms | "
        f"update / baseline | log update / baseline | per update at k = {LOG_EVERY} |")
  print("|---|---|---|---|---|---|---|---|---|")
  rows = []
  for name, batch_size, side, channels in CASES:
    if name not in wanted:
      continue
    r = measure(name, batch_size, side, channels, args.rounds)
    rows.append(r)
    print(f"| {r['model']} | {r['batch']} | {r['image']} | {r['update_ms']:.2f} | "
          f"{r['log_update_ms']:.2f} | {r['baseline_ms']:.2f} | {r['ratio']:.3f} | "
          f"{r['log_ratio']:.3f} | {r['mixed_ratio']:.3f} |", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
