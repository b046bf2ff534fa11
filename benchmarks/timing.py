"""How every benchmark in this folder times, counts and describes the machine.

One module so that every table is measured the same way: interleaved rounds
(drift and other users of a shared CPU hit every contender alike), medians
after warm-up, FLOPs from XLA's own cost analysis of the compiled program, and
the machine's peak from a large float32 matmul timed in the same process.

The host allocator matters on XLA:CPU: glibc hands each large temporary of a
compiled program back to the kernel (mmap/munmap) and the next execution
faults every page in again (~42,000 page faults per LeNet-5 update at batch
1,024, a quarter of the step in the kernel; the 2048^2 matmul's 16 MiB output
alone halves the measured peak). `ALLOCATOR_ENV` keeps freed memory in the
process; it must be in the environment before Python starts, so run_all.py
passes it to every benchmark it runs.
"""

import os
import platform
import statistics
import time
from typing import Callable, Dict

import jax
import jax.numpy as jnp

# glibc tunables: one arena and no trimming/mmap for large blocks, so that the
# temporaries of one execution are reused by the next without page faults.
ALLOCATOR_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "2147483647",
                 "MALLOC_TRIM_THRESHOLD_": "2147483647"}


def allocator() -> str:
  """'kept' when this process runs with ALLOCATOR_ENV, else 'glibc default'."""
  kept = all(os.environ.get(k) == v for k, v in ALLOCATOR_ENV.items())
  return "kept (ALLOCATOR_ENV)" if kept else "glibc default"


def interleaved(calls: Dict[str, Callable[[], object]], rounds: int,
                warmup: int = 2) -> Dict[str, float]:
  """Median seconds of each call, timed in interleaved rounds after warm-up.

  Each call must return what it computed, so that the time includes finishing
  it on the device (`jax.block_until_ready`).
  """
  for _ in range(warmup):
    for call in calls.values():
      jax.block_until_ready(call())
  times = {name: [] for name in calls}
  for _ in range(rounds):
    for name, call in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(call())
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def matmul_peak(n: int = 2048, reps: int = 20) -> float:
  """GFLOP/s of the best of `reps` n x n float32 matmuls (the machine's peak).

  The output buffer is donated back each time, so that the peak is the
  arithmetic, not the allocation of a fresh 16 MiB output.
  """
  a = jnp.full((n, n), 1.0 / n, jnp.float32)
  matmul = jax.jit(lambda c, a: a @ a + 0 * c, donate_argnums=(0,))
  c = jnp.zeros((n, n), jnp.float32)
  best = float("inf")
  for _ in range(reps + 2):
    start = time.perf_counter()
    c = jax.block_until_ready(matmul(c, a))
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best / 1e9


def compiled_flops(jitted, *args) -> float:
  """FLOPs of one call, from XLA's cost analysis of the compiled program."""
  analysis = jitted.lower(*args).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per program
    analysis = analysis[0]
  return float(analysis.get("flops", 0.0))


def cpu_model() -> str:
  """The CPU's model name (from /proc/cpuinfo where there is one)."""
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f
                  if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def machine() -> str:
  """One line: CPU model, cores, devices, library versions, allocator."""
  model = cpu_model()
  import flax
  import optax
  return (f"{model}, {os.cpu_count()} cores; {jax.device_count()} x "
          f"{jax.devices()[0].device_kind}; jax {jax.__version__}, flax "
          f"{flax.__version__}, optax {optax.__version__}; allocator {allocator()}")
