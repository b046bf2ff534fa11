"""Runs the whole benchmark suite and writes benchmarks/RESULTS.md.

  python benchmarks/run_all.py [--out=benchmarks/RESULTS.md] [--before=REV|none]
      [--only=step_vs_baseline.py,study.py,...]

Each benchmark runs in its own process, on one CPU device (a forced device
count from XLA_FLAGS is dropped) and with `timing.ALLOCATOR_ENV`, with the
arguments below. RESULTS.md records the date, the machine, the versions and
each table as printed, with the command that printed it and its wall time.

The speed section comes first: the step against the flax baseline, the default
study's wall time by stage and the quick study's points side by side, each
measured on this checkout ("after") and on `--before=REV` ("before", the commit
before the speed work by default), checked out into a temporary git worktree
and run with this checkout's benchmark scripts. The whole suite takes about 35
minutes on a 2-core CPU, 10 without the before columns (`--before=none`).
"""

import argparse
import datetime
import os
import platform
import json
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import timing  # noqa: E402

# The last commit before the speed work of 2026-12-05 (lean diagnostics, shared
# programs, the compilation cache, points side by side).
BEFORE = "879f19e22705ecb7fdb384c637a5da41291ccf72"
QUICK = "configs/studies/fashion_mnist.py:quick"

# (title, script, arguments, timeout in seconds)
SUITE = (
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


def run(script, script_args, env, timeout):
  """(stdout, seconds, failure or ""), the script run from the repository root."""
  command = [sys.executable, os.path.join("benchmarks", script), *script_args]
  start = time.perf_counter()
  try:
    out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=timeout)
    text, failure = out.stdout.strip(), ""
    if out.returncode:
      failure = "failed: " + (out.stderr.strip().splitlines() or ["?"])[-1]
  except subprocess.TimeoutExpired as e:
    text = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    text, failure = text.strip(), f"stopped after its {timeout} s budget"
  seconds = time.perf_counter() - start
  print(f"{script} {' '.join(script_args)}: {seconds:.0f} s", flush=True)
  return text, seconds, failure


def run_json(script, script_args, env, timeout, scratch):
  """The script's --json result (None if it failed), with its printed text."""
  path = os.path.join(scratch, f"{len(os.listdir(scratch))}.json")
  text, seconds, failure = run(script, [*script_args, f"--json={path}"], env, timeout)
  printed = (f"`python benchmarks/{script} {' '.join(script_args)}` ({seconds:.0f} s)"
             f"\n\n{text}" + (f"\n\n{failure}" if failure else ""))
  if failure or not os.path.exists(path):
    return None, printed
  with open(path) as f:
    return json.load(f), printed


def checkout(rev, scratch):
  """A worktree of `rev` under `scratch` (None, with the reason, if git cannot)."""
  path = os.path.join(scratch, "before")
  out = subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", path, rev],
                       capture_output=True, text=True)
  if out.returncode:
    return None, (out.stderr.strip().splitlines() or ["?"])[-1]
  return path, ""


def number(value, fmt):
  return "—" if value is None else format(value, fmt)


def step_table(before, after):
  lines = ["| model | batch | image | before: lbt / baseline | after: update / baseline | "
           "after: log update / baseline | after: per update at k = 50 |",
           "|---|---|---|---|---|---|---|"]
  old = {(r["model"], r["batch"]): r for r in before or []}
  for r in after or []:
    b = old.get((r["model"], r["batch"]))
    lines.append(f"| {r['model']} | {r['batch']} | {r['image']} | "
                 f"{number(b and b['ratio'], '.3f')} | {r['ratio']:.3f} | "
                 f"{r['log_ratio']:.3f} | {r['mixed_ratio']:.3f} |")
  return "\n".join(lines)


STAGES = ("compile", "train", "evaluate", "other (set-up, data, metrics, checkpoints, report)",
          "wall")


def study_table(before, after, before_overall, after_overall):
  """Stages with each update waited for, then the wall and compile as the study runs."""
  lines = ["| default study | before s | before % of wall | after s | after % of wall |",
           "|---|---|---|---|---|"]
  rows = [(stage + " (each update waited for)" * (stage == "wall"), stage, before, after)
          for stage in STAGES]
  rows += [("wall as the study runs (updates not waited for)", "wall", before_overall,
            after_overall),
           ("compile as the study runs", "compile", before_overall, after_overall)]
  for label, stage, *sides in rows:
    cells = []
    for side in sides:
      if side is None:
        cells += ["—", "—"]
      else:
        cells += [f"{side[stage]:.1f}", f"{100 * side[stage] / side['wall']:.1f}"]
    lines.append(f"| {label} | {' | '.join(cells)} |")
  for key in ("points", "updates", "XLA compilations", "persistent-cache hits", "digest"):
    cells = ["—" if side is None else str(side.get(key, 0)) for side in (before, after)]
    lines.append(f"| {key} | {cells[0]} | | {cells[1]} | |")
  return "\n".join(lines)


def concurrency_table(runs):
  lines = ["| quick study | code | devices | points at once | wall s | compile s | train s | "
           "evaluate s | accuracy table digest |", "|---|---|---|---|---|---|---|---|---|"]
  for label, code, devices, at_once, r in runs:
    if r is None:
      lines.append(f"| {label} | {code} | {devices} | {at_once} | failed | | | | |")
      continue
    lines.append(f"| {label} | {code} | {devices} | {at_once} | {r['wall']:.1f} | "
                 f"{r['compile']:.1f} | {r['train']:.1f} | {r['evaluate']:.1f} | "
                 f"{r['digest']} |")
  return "\n".join(lines)


def speed_sections(before_rev, env, wanted):
  """The before/after tables of the speed work: step, default study, side by side."""
  sections = []
  with tempfile.TemporaryDirectory() as scratch:
    before_code, why = (None, "--before=none") if before_rev == "none" else checkout(
        before_rev, scratch)
    note = (f"before: {before_rev[:12]}" if before_code else
            f"no before columns ({why})")
    try:
      if wanted("step_vs_baseline.py"):
        printed = []
        after, text = run_json("step_vs_baseline.py", ["--rounds=3"], env, 300, scratch)
        printed.append(text)
        before = None
        if before_code:
          before, text = run_json("step_vs_baseline.py", ["--rounds=3",
                                  f"--code={before_code}"], env, 300, scratch)
          printed.append(text)
        sections.append(
            "## Speed 1: the step vs the flax-example baseline, before and after\n\n"
            f"{note}; ratios are medians of interleaved rounds within each process; "
            "the goal is <= 1.02 for every row.\n\n" + step_table(before, after) +
            "\n\n" + "\n\n".join(printed) + "\n")
      if wanted("study.py"):
        printed, results = [], []
        for mode in ([], ["--overall"]):
          after, text = run_json("study.py", mode, env, 600, scratch)
          printed.append(text)
          before = None
          if before_code:
            before, text = run_json("study.py", [f"--code={before_code}", *mode], env, 600,
                                    scratch)
            printed.append(text)
          results += [before, after]
        sections.append(
            "## Speed 2: the default study's wall time, before and after\n\n"
            f"{note}; one CPU device, a fresh study directory each (the compilation "
            "cache starts empty); goals: wall <= 150 s, compile <= 25 % of it, the same "
            "accuracy table (digest).\n\n" + study_table(*results) + "\n\n" +
            "\n\n".join(printed) + "\n")
        runs, printed = [], []
        plan = [("one at a time", "after", 1, 1, []),
                ("one at a time", "after", 2, 1, []),
                ("side by side", "after", 2, 2, ["--devices_per_point=1"])]
        if before_code:
          plan.insert(0, ("one at a time", "before", 2, 1, [f"--code={before_code}"]))
        for label, code, devices, at_once, extra in plan:
          result, text = run_json("study.py", [f"--study={QUICK}", f"--devices={devices}",
                                               *extra], env, 400, scratch)
          runs.append((label, code, devices, at_once, result))
          printed.append(text)
        sections.append(
            "## Speed 3: the quick study's points side by side (--devices_per_point)\n\n"
            f"{note}; emulated CPU devices on this machine's cores. One device per "
            "point side by side must give the table of one at a time on one device "
            "(the same digest); on the whole 2-device mesh a point's batch is split "
            "differently, so its digits may differ.\n\n" + concurrency_table(runs) +
            "\n\n" + "\n\n".join(printed) + "\n")
    finally:
      if before_code:
        subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", before_code],
                       capture_output=True)
        subprocess.run(["git", "-C", REPO, "worktree", "prune"], capture_output=True)
  return sections


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "RESULTS.md"))
  parser.add_argument("--only", default="", help="comma-separated script names")
  parser.add_argument("--before", default=BEFORE,
                      help="git revision for the before columns, or none")
  args = parser.parse_args()

  def wanted(script):
    return not args.only or script in args.only.split(",")

  env = environment()
  load = os.getloadavg()
  suite_start = time.perf_counter()
  sections = speed_sections(args.before, env, wanted)
  for title, script, script_args, timeout in SUITE:
    if not wanted(script):
      continue
    text, seconds, failure = run(script, script_args, env, timeout)
    if failure:
      text += "\n\n" + failure
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
      f"- Environment: one CPU device unless a table says otherwise; {' '.join(f'{k}={v}' for k, v in timing.ALLOCATOR_ENV.items())}\n")
  with open(args.out, "w") as f:
    f.write(header + "\n" + "\n".join(sections))
  print(f"wrote {args.out} ({total:.0f} s)")


if __name__ == "__main__":
  main()
