"""Gradient accumulation: time per example and memory as the batch grows.

  python benchmarks/accumulation.py [--model=lenet5] [--microbatch=512]

For each global batch B at a fixed microbatch, one subprocess (so that its peak
RSS is its own) builds lbt's real update (`lbt.engine.programs.compile_update`) and times,
interleaved, the accumulated update of B examples against the one-shot step of
B = microbatch (medians over rounds). Microbatches are made on the host one at a
time from uint8 pixels and normalized to float32, as the input pipeline does,
so host memory behaves as in training. Prints one table:

  B | microbatches | us/example | vs one-shot | compiled MiB | peak RSS MiB

"compiled MiB" is the memory analysis (arguments + temporaries + outputs) of
the largest compiled program of the update; for B > microbatch that is the
gradient program, which sees one microbatch whatever B is.
"""

import argparse
import collections
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCHES = (1024, 4096, 16384, 65536)
FULL_SET = (60000, 500)  # Fashion-MNIST's whole training set, microbatch 500.


def measure(model_name: str, batch: int, micro: int, rounds: int) -> dict:
  """Runs in the subprocess: interleaved one-shot and accumulated updates."""
  sys.path.insert(0, REPO)
  import functools
  import jax
  import numpy as np
  import optax
  from lbt import models, optim
  from lbt.engine import parallel, programs, step

  mesh = parallel.create_mesh()
  model = models.create(model_name, num_classes=10)
  tx = optax.inject_hyperparams(lambda learning_rate: optim.create_by_name(
      "momentum", learning_rate, weight_decay=5e-4))(learning_rate=0.01)
  init = jax.jit(functools.partial(step.create_train_state, model=model, tx=tx,
                                   input_shape=(28, 28, 1)),
                 out_shardings=parallel.replicated(mesh))
  rng = np.random.default_rng(0)

  def microbatches(count):
    for _ in range(count):
      pixels = rng.integers(0, 256, (micro, 28, 28, 1), dtype=np.uint8)
      yield parallel.to_global({
          "image": (pixels.astype(np.float32) - 72.9) / 90.0,
          "label": rng.integers(0, 10, micro).astype(np.int32)}, mesh)

  def compiled_mib(programs, *args):
    memory = programs.lower(*args).compile().memory_analysis()
    return (memory.argument_size_in_bytes + memory.temp_size_in_bytes
            + memory.output_size_in_bytes) / 2**20

  n = batch // micro
  one_shot = programs.compile_update(model, tx, lambda c: 0.01, mesh, 1, 0.0)
  accumulated = programs.compile_update(model, tx, lambda c: 0.01, mesh, n, 0.0)
  state = init(jax.random.PRNGKey(0))
  params_init = init(jax.random.PRNGKey(0)).params
  # Warm up (compile) both; the accumulated programs are the same for any n.
  state, _ = one_shot(state, microbatches(1), params_init, 0.0)
  state, _ = accumulated(state, microbatches(min(n, 2)), params_init, 0.0)
  jax.block_until_ready(state)
  if n > 1:
    sums = step.start_update(state)
    memory = compiled_mib(accumulated.programs["add"], state, sums,
                          next(microbatches(1)))
  else:
    memory = 0.0
  times = {"one_shot": [], "accumulated": []}
  for _ in range(rounds):
    for name, update, count in (("one_shot", one_shot, 1), ("accumulated", accumulated, n)):
      # Repeat the one-shot step to cover as many examples as one accumulated update.
      repeats = n if name == "one_shot" else 1
      start = time.perf_counter()
      in_flight = collections.deque()
      for _ in range(repeats):  # As the train loop: a few updates ahead at most.
        state, metrics = update(state, microbatches(count), params_init, 0.0)
        in_flight.append(metrics)
        if len(in_flight) > programs.IN_FLIGHT:
          jax.block_until_ready(in_flight.popleft())
      jax.block_until_ready((state, metrics))
      times[name].append((time.perf_counter() - start) / (repeats * count * micro))
  one, acc = (float(np.median(times[k])) for k in ("one_shot", "accumulated"))
  return {"batch": batch, "micro": micro, "microbatches": n,
          "us_per_example": 1e6 * acc, "one_shot_us_per_example": 1e6 * one,
          "ratio": acc / one, "compiled_mib": memory,
          "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="lenet5")
  parser.add_argument("--microbatch", type=int, default=512)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    print(json.dumps(measure(args.model, *args.one, args.rounds)))
    return
  cases = [(b, args.microbatch) for b in BATCHES] + [FULL_SET]
  print(f"accumulation, {args.model}, medians of {args.rounds} interleaved rounds")
  print("| B | microbatch | microbatches | us/example | one-shot us/example | "
        "vs one-shot | compiled MiB (gradient program) | peak RSS MiB |")
  print("|---|---|---|---|---|---|---|---|")
  for batch, micro in cases:
    # Fewer rounds where one update is long; each round still covers B examples.
    rounds = args.rounds if batch <= 16384 else max(1, args.rounds - 1)
    out = subprocess.run(
        [sys.executable, __file__, f"--model={args.model}", f"--rounds={rounds}",
         "--one", str(batch), str(micro)], capture_output=True, text=True, cwd=REPO)
    if out.returncode:
      print(f"| {batch} | {micro} | failed: {out.stderr.strip().splitlines()[-1]} |")
      continue
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"| {r['batch']} | {r['micro']} | {r['microbatches']} | "
          f"{r['us_per_example']:.0f} | {r['one_shot_us_per_example']:.0f} | "
          f"{r['ratio']:.2f} | {r['compiled_mib']:.1f} | {r['peak_rss_mib']:.0f} |",
          flush=True)


if __name__ == "__main__":
  main()
