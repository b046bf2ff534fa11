"""How close each model's training step computes to the machine's peak.

  python benchmarks/roofline.py [--rounds=5]

For each model and batch: FLOPs of one update from XLA's cost analysis of the
compiled step between log steps (`lbt.engine.step.train_step` without the full
diagnostics, jitted and donated as the loop does), the measured median time,
GFLOP/s, and that as a fraction of the peak of a 2048^2 float32 matmul timed
in the same process. Batches above 4,096 stream
microbatches of at most this size through the same programs, so their
efficiency is the microbatch's (benchmarks/accumulation.py measures the rest).

Two A/B tables say what lbt changed for LeNet-5, before and after, on one
batch: the 2x2 max pooling (reduce_window, whose gradient XLA builds as an
argmax reduce-window plus a scatter, against lbt's reshape-and-max), timed
interleaved in one process; and the host allocator (glibc's default against
`timing.ALLOCATOR_ENV`), which can only differ between processes, so two
subprocesses alternate. The HLO row counts what the compiled step is made of.
"""

import argparse
import collections
import functools
import json
import os
import re
import resource
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import timing  # noqa: E402
import optax  # noqa: E402
from lbt import models, optim
from lbt.engine import step
from lbt.models import lenet  # noqa: E402

CASES = (("lenet5", 256, 28, 1), ("lenet5", 1024, 28, 1), ("lenet5", 4096, 28, 1),
         ("mlp", 256, 28, 1), ("mlp", 4096, 28, 1), ("resnet20", 256, 32, 3))
AB_BATCH = 1024


def compiled_step(name: str, batch_size: int, side: int, channels: int, seed: int = 0):
  """(jitted step, state, batch) of lbt's one-shot update for one model."""
  model = models.create(name, num_classes=10)
  tx = optax.inject_hyperparams(lambda learning_rate: optim.create_by_name(
      "momentum", learning_rate, weight_decay=5e-4))(learning_rate=0.01)
  rng = np.random.default_rng(seed)
  batch = {"image": rng.normal(size=(batch_size, side, side, channels)).astype(np.float32),
           "label": rng.integers(0, 10, batch_size).astype(np.int32)}
  state = step.create_train_state(jax.random.PRNGKey(seed), model, tx, (side, side, channels))
  # The update between log steps: learning rate fixed, no full diagnostics.
  fn = jax.jit(functools.partial(step.train_step, learning_rate=0.01, full_diagnostics=False,
                                 apply_fn=model.apply, tx=tx, label_smoothing=0.0),
               donate_argnums=(0,))
  return fn, state, jax.device_put(batch)


def runner(fn, state, batch, params_init):
  holder = [state]

  def run():
    holder[0], metrics = fn(holder[0], batch, params_init)
    return holder[0], metrics
  return run


def hlo_summary(fn, state, batch, params_init) -> str:
  """Counts of the kinds of work in the compiled step."""
  text = fn.lower(state, batch, params_init).compile().as_text()
  count = collections.Counter()
  for kind, pattern in (("convolution", r" convolution\("), ("scatter", r" scatter\("),
                        ("argmax reduce-window", r"= \(f32\[[^=]*\) reduce-window\("),
                        ("YNNPACK fusion", r"kind=kCustom"), ("loop fusion", r"kind=kLoop")):
    count[kind] = len(re.findall(pattern, text))
  return ", ".join(f"{k} {v}" for k, v in count.items())


def roofline(rounds: int) -> None:
  peaks = [timing.matmul_peak()]
  rows = []
  for name, batch_size, side, channels in CASES:
    fn, state, batch = compiled_step(name, batch_size, side, channels)
    params_init = jax.tree.map(lambda p: p + 0, state.params)
    flops = timing.compiled_flops(fn, state, batch, params_init)
    seconds = timing.interleaved({"step": runner(fn, state, batch, params_init)},
                                 rounds)["step"]
    rows.append((name, batch_size, flops, seconds))
  # Other users of a shared CPU lower a single reading: the best of two is the peak.
  peak = max(peaks + [timing.matmul_peak()])
  print(f"roofline: {timing.machine()}; medians of {rounds} rounds")
  print(f"matmul peak (2048^2 float32, best of readings before and after): {peak:.0f} GFLOP/s")
  print("| model | batch | GFLOP / update | ms / update | us / example | GFLOP/s | % of peak |")
  print("|---|---|---|---|---|---|---|")
  for name, batch_size, flops, seconds in rows:
    rate = flops / seconds / 1e9
    print(f"| {name} | {batch_size} | {flops / 1e9:.2f} | {1e3 * seconds:.1f} | "
          f"{1e6 * seconds / batch_size:.1f} | {rate:.1f} | {100 * rate / peak:.1f} |")


def pooling_ab(rounds: int) -> None:
  """LeNet-5 with nn.max_pool (before) and with lbt's max_pool_2x2 (after)."""
  calls, hlo = {}, {}
  for label, pool in (("nn.max_pool (before)", lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))),
                      ("reshape + max (lbt)", lenet.max_pool_2x2)):
    saved, lenet.max_pool_2x2 = lenet.max_pool_2x2, pool
    try:  # The pooling is looked up while tracing, i.e. on the first call.
      fn, state, batch = compiled_step("lenet5", AB_BATCH, 28, 1)
      params_init = jax.tree.map(lambda p: p + 0, state.params)
      hlo[label] = hlo_summary(fn, state, batch, params_init)
      calls[label] = runner(fn, state, batch, params_init)
      jax.block_until_ready(calls[label]())
    finally:
      lenet.max_pool_2x2 = saved
  times = timing.interleaved(calls, rounds)
  first = next(iter(times.values()))
  print(f"\nLeNet-5 pooling, batch {AB_BATCH}, interleaved in one process")
  print("| pooling | ms / update | vs before | compiled step holds |")
  print("|---|---|---|---|")
  for label, seconds in times.items():
    print(f"| {label} | {1e3 * seconds:.1f} | {seconds / first:.2f} | {hlo[label]} |")


def one_process(rounds: int) -> dict:
  """Runs in a subprocess: LeNet-5's step time and page faults per update."""
  fn, state, batch = compiled_step("lenet5", AB_BATCH, 28, 1)
  params_init = jax.tree.map(lambda p: p + 0, state.params)
  run = runner(fn, state, batch, params_init)
  for _ in range(2):
    jax.block_until_ready(run())
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  seconds = timing.interleaved({"step": run}, rounds, warmup=0)["step"]
  faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / rounds
  return {"ms": 1e3 * seconds, "faults": faults, "peak": timing.matmul_peak()}


def allocator_ab(rounds: int, alternations: int = 2) -> None:
  results = collections.defaultdict(list)
  base_env = {k: v for k, v in os.environ.items() if k not in timing.ALLOCATOR_ENV}
  for _ in range(alternations):
    for label, env in (("glibc default", base_env),
                       ("ALLOCATOR_ENV", {**base_env, **timing.ALLOCATOR_ENV})):
      out = subprocess.run([sys.executable, __file__, f"--rounds={rounds}", "--one"],
                           env=env, capture_output=True, text=True, cwd=REPO, check=True)
      results[label].append(json.loads(out.stdout.strip().splitlines()[-1]))
  print(f"\nLeNet-5 batch {AB_BATCH}, host allocator: subprocesses alternated "
        f"{alternations}x, medians")
  print("| allocator | ms / update | page faults / update | matmul peak GFLOP/s |")
  print("|---|---|---|---|")
  for label, runs in results.items():
    med = lambda key: float(np.median([r[key] for r in runs]))
    print(f"| {label} | {med('ms'):.1f} | {med('faults'):.0f} | {med('peak'):.0f} |")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    print(json.dumps(one_process(args.rounds)))
    return
  roofline(args.rounds)
  pooling_ab(args.rounds)
  allocator_ab(args.rounds)


if __name__ == "__main__":
  main()
