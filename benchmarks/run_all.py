"""Runs the whole benchmark suite and writes benchmarks/RESULTS.md.

  python benchmarks/run_all.py [--out=benchmarks/RESULTS.md]

Each benchmark runs in its own process, on one CPU device (a forced device
count from XLA_FLAGS is dropped) and with `timing.ALLOCATOR_ENV`, with the
arguments below, chosen so that the suite takes about 10 to 11 minutes on a 2-core
CPU. RESULTS.md records the date, the machine, the versions and each table as
printed, with the command that printed it and its wall time.
"""

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import timing  # noqa: E402

# (title, script, arguments, timeout in seconds)
SUITE = (
    ("Step vs the flax-example baseline", "step_vs_baseline.py", ["--rounds=3"], 200),
    ("Roofline", "roofline.py", ["--rounds=5"], 180),
    ("Input pipeline", "input_pipeline.py", [], 90),
    ("The default run's loop (LeNet-5, momentum, batch 256, one epoch)", "loop.py",
     ["--arg=momentum,batch=256,epochs=1"], 120),
    ("Accumulation (LeNet-5, microbatch 512)", "accumulation.py", ["--rounds=2"], 300),
    ("Optimizers on ResNet-50's parameter tree", "optimizers.py", ["--reps=8", "--warmup=2"], 180),
    ("Gradient noise scale: its cost, noise_scale_split, B_simple over a LeNet-5 run",
     "noise_scale.py", ["--seconds=5"], 300),
)


def environment() -> dict:
  env = dict(os.environ, **timing.ALLOCATOR_ENV)
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                 env.get("XLA_FLAGS", "")).strip()
  if flags:
    env["XLA_FLAGS"] = flags
  else:
    env.pop("XLA_FLAGS", None)
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def versions() -> str:
  import flax
  import grain  # noqa: F401
  import jax
  import jaxlib
  import numpy
  import optax
  from importlib import metadata
  grain_version = metadata.version("grain")
  return (f"Python {platform.python_version()}, jax {jax.__version__}, jaxlib "
          f"{jaxlib.__version__}, flax {flax.__version__}, optax {optax.__version__}, "
          f"numpy {numpy.__version__}, grain {grain_version}")


def cpu() -> str:
  model = timing.cpu_model()
  memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  return f"{model}, {os.cpu_count()} cores, {memory:.0f} GiB, {platform.platform()}"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "RESULTS.md"))
  parser.add_argument("--only", default="", help="comma-separated script names")
  args = parser.parse_args()
  env = environment()
  load = os.getloadavg()
  sections = []
  suite_start = time.perf_counter()
  for title, script, script_args, timeout in SUITE:
    if args.only and script not in args.only.split(","):
      continue
    command = [sys.executable, os.path.join("benchmarks", script), *script_args]
    start = time.perf_counter()
    try:
      out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=timeout)
      text, status = out.stdout.strip(), out.returncode
      if status:
        text += "\n\nfailed: " + (out.stderr.strip().splitlines() or ["?"])[-1]
    except subprocess.TimeoutExpired as e:
      text = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
      text = text.strip() + f"\n\nstopped after its {timeout} s budget"
    seconds = time.perf_counter() - start
    print(f"{script}: {seconds:.0f} s", flush=True)
    sections.append(f"## {title}\n\n`python benchmarks/{script} {' '.join(script_args)}` "
                    f"({seconds:.0f} s)\n\n{text}\n")
  total = time.perf_counter() - suite_start
  header = (
      "# lbt benchmark results\n\n"
      f"Written by `python benchmarks/run_all.py` on "
      f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} in {total:.0f} s.\n\n"
      f"- Machine: {cpu()}; load average at the start {load[0]:.1f} "
      "(the CPU is shared: ratios are interleaved in one process, absolute times "
      "move with the load)\n"
      f"- Versions: {versions()}\n"
      f"- Environment: one CPU device; {' '.join(f'{k}={v}' for k, v in timing.ALLOCATOR_ENV.items())}\n")
  with open(args.out, "w") as f:
    f.write(header + "\n" + "\n".join(sections))
  print(f"wrote {args.out} ({total:.0f} s)")


if __name__ == "__main__":
  main()
