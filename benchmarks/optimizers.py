"""Update time of every lbt optimizer on ResNet-50's parameter tree.

lbt's LARS and LAMB are custom chains (published trust ratio, masks, stored
ratios); this checks they cost no more than optax.lars / optax.lamb with the
same masks. Each timed call is one jit-compiled `tx.update` +
`optax.apply_updates` with params and opt_state donated, as in the train
step. Calls are interleaved across optimizers so drift hits all equally.
Optimizers that need more than the gradient (`optim.needs`: CLARS's
per-example gradient norms, the VRGD family's mean_k g_k^2 over k = 8
microbatches) get them as given arrays, so only the update's own cost is timed,
not the step's cost of computing them.

Usage: python benchmarks/optimizers.py [--reps 50]
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lbt import models, optim

WEIGHT_DECAY = 1e-4


def resnet50_shapes():
  """ResNet-50's parameter ShapeDtypeStructs, without allocating them."""
  module = models.create("resnet50", num_classes=1000)
  variables = jax.eval_shape(
      lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)),
                          train=False))
  return variables["params"], "lbt.models.create('resnet50')"


def optimizers(schedule):
  mask = optim.decay_and_trust_mask(None)  # lbt's default exclusion: ndim <= 1
  txs = {
      "lars": optim.lars(schedule, weight_decay=WEIGHT_DECAY),
      "optax.lars": optax.lars(schedule, weight_decay=WEIGHT_DECAY,
                               weight_decay_mask=mask, trust_ratio_mask=mask),
      "lamb": optim.lamb(schedule, weight_decay=WEIGHT_DECAY),
      "optax.lamb": optax.lamb(schedule, weight_decay=WEIGHT_DECAY, mask=mask),
  }
  for name in optim.OPTIMIZERS.names():
    if name not in txs:
      txs[name] = optim.create_by_name(name, schedule, weight_decay=WEIGHT_DECAY)
  return txs


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--reps", type=int, default=50)
  parser.add_argument("--warmup", type=int, default=5)
  args = parser.parse_args()

  shapes, source = resnet50_shapes()
  leaves = jax.tree.leaves(shapes)
  print(f"ResNet-50 params: {len(leaves)} tensors, "
        f"{sum(int(np.prod(x.shape)) for x in leaves):,} parameters ({source})")
  print(f"device: {jax.devices()[0].device_kind} x{len(jax.devices())}, "
        f"jax {jax.__version__}, optax {optax.__version__}, "
        f"{args.reps} interleaved reps after {args.warmup} warm-up calls")

  keys = iter(jax.random.split(jax.random.PRNGKey(0), 2 * len(leaves)))
  normal = lambda s: 0.05 * jax.random.normal(next(keys), s.shape, s.dtype)
  params0 = jax.tree.map(normal, shapes)
  grads = jax.tree.map(normal, shapes)
  schedule = optim.create_schedule(
      ml_collections.ConfigDict(dict(name="poly", warmup_epochs=5.0,
                                     end_learning_rate=1e-4, power=2.0)),
      10.0, steps_per_epoch=100, num_train_steps=10_000)

  def extra_args(name):
    needs = optim.needs(dict(name=name)) if name in optim.OPTIMIZERS else ()
    extra = {}
    if "microbatch_grad_sq" in needs:  # G^2 plus a variance of G^2 / 2
      extra.update(num_microbatches=8, microbatch_grad_sq=jax.tree.map(
          lambda g: 1.5 * g * g, grads))
    if "per_example_grad_norm" in needs:  # examples disagree: 4 ||G||
      extra.update(per_example_grad_norm=jax.tree.map(
          lambda g: 4 * jnp.linalg.norm(g.ravel()), grads))
    return extra

  def make_step(tx, num_microbatches=None, **arrays):
    static = {} if num_microbatches is None else dict(num_microbatches=num_microbatches)

    def step(params, state, grads, arrays):
      updates, state = tx.update(grads, state, params, **arrays, **static)
      return optax.apply_updates(params, updates), state
    jitted = jax.jit(step, donate_argnums=(0, 1))
    return lambda params, state, grads: jitted(params, state, grads, arrays)

  runs = {}
  for name, tx in optimizers(schedule).items():
    params = jax.tree.map(jnp.copy, params0)
    runs[name] = [make_step(tx, **extra_args(name)), params, tx.init(params), []]
    for _ in range(args.warmup):
      run = runs[name]
      run[1], run[2] = run[0](run[1], run[2], grads)
    jax.block_until_ready(runs[name][1:3])

  for _ in range(args.reps):
    for run in runs.values():
      start = time.perf_counter()
      run[1], run[2] = run[0](run[1], run[2], grads)
      jax.block_until_ready((run[1], run[2]))
      run[3].append(time.perf_counter() - start)

  median = {name: 1e3 * statistics.median(run[3]) for name, run in runs.items()}
  print(f"{'optimizer':<10} {'lbt ms':>9} {'optax ms':>9} {'lbt/optax':>10}")
  for name in ["lars", "lamb"] + [n for n in optim.OPTIMIZERS.names()
                                  if n not in ("lars", "lamb")]:
    ref = median.get(f"optax.{name}")
    cols = (f"{ref:9.2f} {median[name] / ref:10.3f}" if ref
            else f"{'':>9} {'':>10}")
    print(f"{name:<10} {median[name]:9.2f} {cols}")


if __name__ == "__main__":
  main()
