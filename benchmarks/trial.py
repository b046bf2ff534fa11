"""One trial of the default study against its bare step: where a trial's time goes.

  python benchmarks/trial.py [--batches=128,512,2048,50000] [--rounds=1] [--cache=DIR]

For the study's MLP (`configs/studies/fashion_mnist.py`: `tuned_point("momentum", B)`,
784-128-128-10 with BatchNorm, 3 epochs, 10,000 examples held out) at each batch B:

- the bare step: the same model and optimizer, one jitted momentum step per
  update on device-resident arrays, each batch gathered on the device from the
  epoch's permutation: the physical limit of the loop on this machine;
- a real trial, `lbt.engine.train.train_and_evaluate` in a fresh workdir, split
  into stages by timers wrapped around the loop's own functions (the loop is
  unchanged): compilation (XLA compiles and persistent-cache loads, taken out
  of the stage they happened in), the training updates, evaluation, checkpoint
  saves and the rest (set-up, the summary); within the updates, the host's
  input and metrics work. Updates are not waited for, as in a study.

Examples per second count the trial's training examples over the whole trial
and over its updates, each against the bare step's, by the wall clock and by
the process's CPU time (on a shared, loaded CPU the wall clock measures the
other users too). --input sets LBT_INPUT (lbt.data.device_input) for the trials. The trial runs inside a
persistent compilation cache (--cache) that a first, untimed trial of each
batch fills (warm); --cold times that first trial instead, in an empty cache.
It also counts the XLA programs a trial obtains and how many of those came
from the cache (the rest were compiled).
"""

import argparse
import collections
import contextlib
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks import timing  # noqa: E402
from configs.studies import fashion_mnist as study_configs  # noqa: E402
from lbt import data, optim  # noqa: E402
from lbt.data import device_input  # noqa: E402
from lbt.engine import checkpoint, config as config_lib, parallel, programs, step  # noqa: E402
from lbt.engine import train, train_metrics  # noqa: E402

COMPILE_EVENTS = ("/jax/core/compile/backend_compile_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration")
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
STAGES = ("compile", "updates", "evaluation", "checkpoint", "other")


def trial_config(batch: int):
  """The study's momentum trial at `batch` (its base learning rate)."""
  return study_configs.tuned_point("momentum", batch)


# ---- the bare step ----

def bare_step(config, rounds: int):
  """Examples per second of the bare step over one epoch, by the wall clock
  and by the process's CPU time (medians of rounds after one warm-up)."""
  facts = config_lib.validate(config, num_devices=1)
  pipeline = data.Pipeline(
      data.DATASETS.get(config.dataset.name), data_dir=config.dataset.data_dir, cache=True,
      seed=config.seed, batch_size=facts.batch_size, microbatch_size=facts.microbatch_size,
      steps_per_epoch=facts.steps_per_epoch, eval_batch_size=config.eval_batch_size,
      validation_examples=facts.validation_examples)
  batches = pipeline.train_batches
  images = jnp.asarray(data.pipeline.normalize(batches.source.images, pipeline.spec))
  labels = jnp.asarray(batches.source.labels)
  model = programs.build_model(config, facts.num_classes)
  tx = optim.create_with_learning_rate_input(config.optimizer)
  update = jax.jit(functools.partial(_bare_update, model=model, tx=tx, batch=facts.batch_size),
                   donate_argnums=(0,))
  state = step.create_train_state(jax.random.PRNGKey(0), model, tx, (28, 28, 1))
  params_init = jax.tree.map(jnp.copy, state.params)
  order = jnp.asarray(batches.permutation(0))
  updates = max(facts.steps_per_epoch, 3)
  walls, cpus = [], []
  for _ in range(rounds + 1):
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(updates):
      start = (i % facts.steps_per_epoch) * facts.batch_size
      state, metrics = update(state, images, labels, order, start, params_init, 0.01)
    jax.block_until_ready(metrics)
    walls.append(time.perf_counter() - wall)
    cpus.append(time.process_time() - cpu)
  examples = updates * facts.batch_size
  return examples / statistics.median(walls[1:]), examples / statistics.median(cpus[1:])


def _bare_update(state, images, labels, order, start, params_init, learning_rate, *, model,
                 tx, batch):
  indices = jax.lax.dynamic_slice_in_dim(order, start, batch)
  return step.train_step(state, {"image": images[indices], "label": labels[indices]},
                         params_init, learning_rate, False, apply_fn=model.apply, tx=tx,
                         label_smoothing=0.0)


# ---- the trial ----

class Stages:
  """Wall seconds spent in each stage and not in a stage nested in it, with
  compilations charged to 'compile' instead."""

  def __init__(self):
    self.seconds, self.compiled_in = collections.Counter(), collections.Counter()
    self.cpu = collections.Counter()  # the process's CPU seconds, by the same rule
    self.current, self.programs, self.cache_hits = "other", 0, 0

  def on_duration(self, event, duration, **kwargs):
    del kwargs
    if event in COMPILE_EVENTS:
      self.compiled_in[self.current] += duration
      self.programs += event == COMPILE_EVENTS[0]

  def on_event(self, event, **kwargs):
    del kwargs
    self.cache_hits += event == CACHE_HIT_EVENT

  @contextlib.contextmanager
  def stage(self, name):
    outer, self.current = self.current, name
    start, cpu = time.perf_counter(), time.process_time()
    try:
      yield
    finally:
      elapsed, used = time.perf_counter() - start, time.process_time() - cpu
      self.seconds[name] += elapsed
      self.seconds[outer] -= elapsed
      self.cpu[name] += used
      self.cpu[outer] -= used
      self.current = outer

  def timed(self, name, fn, within=None):
    """`fn` timed as stage `name` (only when called inside stage `within`, if given)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
      if within and self.current != within:
        return fn(*args, **kwargs)
      with self.stage(name):
        return fn(*args, **kwargs)
    return wrapper

  def table(self, wall: float):
    """Seconds per stage, compilations moved out; the host's work within updates."""
    own = {name: self.seconds[name] - self.compiled_in[name]
           for name in ("loop", "evaluation", "checkpoint", "input", "metrics")}
    rows = {"compile": sum(self.compiled_in.values()),
            "updates": own["loop"] + own["input"] + own["metrics"],
            "evaluation": own["evaluation"], "checkpoint": own["checkpoint"]}
    rows["other"] = wall - sum(rows.values())
    in_updates = ("loop", "input", "metrics")
    cpu_updates = sum(self.cpu[k] - self.compiled_in[k] for k in in_updates)
    return rows, {"input": own["input"], "metrics": own["metrics"],
                  "cpu updates": cpu_updates}


@contextlib.contextmanager
def instrument(stages: Stages):
  """Wraps the loop's stages in place (timers only); put back on exit."""
  with contextlib.ExitStack() as stack:
    def patch(owner, attribute, stage, within=None):
      original = getattr(owner, attribute)
      setattr(owner, attribute, stages.timed(stage, original, within))
      stack.callback(setattr, owner, attribute, original)

    patch(train, "train_loop", "loop")
    patch(programs, "evaluate", "evaluation")
    patch(checkpoint, "save", "checkpoint")
    patch(train_metrics.TrainMetrics, "flush", "metrics")
    for owner, attribute in input_functions():
      patch(owner, attribute, "input", within="loop")
    jax.monitoring.register_event_duration_secs_listener(stages.on_duration)
    jax.monitoring.register_event_listener(stages.on_event)
    stack.callback(jax.monitoring.unregister_event_duration_listener, stages.on_duration)
    stack.callback(jax.monitoring.unregister_event_listener, stages.on_event)
    yield


def input_functions():
  """The loop's per-update input calls: (owner, attribute)."""
  streams = (data.pipeline.TrainStream, device_input.DeviceStream)
  return [(stream, name) for stream in streams for name in ("next_update", "__next__")] + [
      (parallel, "to_global")]


def trial(config, cache: str):
  """(summary, wall seconds, Stages) of one trial in a fresh workdir."""
  stages = Stages()
  with tempfile.TemporaryDirectory() as workdir, programs.compilation_cache(cache), \
      instrument(stages), contextlib.redirect_stderr(open(os.devnull, "w")):
    start, cpu = time.perf_counter(), time.process_time()
    summary = train.train_and_evaluate(config, workdir)
    wall = time.perf_counter() - start
    stages.cpu["trial"] = time.process_time() - cpu
  return summary, wall, stages


# ---- the table ----

def measure(batch: int, rounds: int, cache: str, cold: bool):
  """The row of one batch: bare step, then the trial's stages (medians)."""
  config = trial_config(batch)
  bare = bare_step(config, rounds)
  if cold:
    shutil.rmtree(cache, ignore_errors=True)
  else:
    trial(config, cache)  # Fills the cache; untimed.
  runs = [trial(config, cache) for _ in range(1 if cold else rounds)]
  walls = [wall for _, wall, _ in runs]
  summary, wall, stages = runs[walls.index(statistics.median_low(walls))]
  rows, host = stages.table(wall)
  return {"batch": batch, "bare": bare[0], "bare cpu": bare[1], "wall": wall,
          "cpu": stages.cpu["trial"], "examples": summary["examples"],
          "updates": summary["num_train_steps"], "accuracy": summary["eval_accuracy"],
          "rows": rows, "host": host, "programs": stages.programs,
          "cache_hits": stages.cache_hits}


def print_table(results, cold: bool) -> None:
  """Two tables: the stages (wall seconds), then examples per second against
  the bare step by the wall clock and by CPU time (steadier on a shared CPU)."""
  print("| batch | updates | trial s | " + " | ".join(f"{s} s" for s in STAGES)
        + " | input, metrics s (in updates) | programs (cache hits) |")
  print("|---" * (5 + len(STAGES)) + "|")
  for r in results:
    print(f"| {r['batch']} | {r['updates']} | {r['wall']:.2f} | "
          + " | ".join(f"{r['rows'][s]:.2f}" for s in STAGES)
          + f" | {r['host']['input']:.2f}, {r['host']['metrics']:.2f} | "
          f"{r['programs']} ({r['cache_hits']}) |")
  print("\n| batch | bare step ex/s | trial ex/s | % | updates ex/s | % "
        "| bare step ex/CPU-s | trial ex/CPU-s | % | updates ex/CPU-s | % |")
  print("|---" * 11 + "|")
  for r in results:
    cells = []
    for bare, whole, updates in ((r["bare"], r["wall"], r["rows"]["updates"]),
                                 (r["bare cpu"], r["cpu"], r["host"]["cpu updates"])):
      cells += [bare, r["examples"] / whole, 100 * r["examples"] / whole / bare,
                r["examples"] / updates, 100 * r["examples"] / updates / bare]
    print(f"| {r['batch']} | " + " | ".join(
        f"{c:,.0f}" for c in cells) + " |")
  print(f"\ncache: {'cold (an empty cache)' if cold else 'warm (a first trial filled it)'}; "
        "updates not waited for, so device time lands where the host waits; "
        f"load average at the end {os.getloadavg()[0]:.1f}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", default="128,512,2048,50000")
  parser.add_argument("--rounds", type=int, default=1)
  parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(),
                                                      "lbt_trial_cache"))
  parser.add_argument("--cold", action="store_true")
  parser.add_argument("--input", choices=device_input.CHOICES, default="auto",
                      help="LBT_INPUT for the trials")
  args = parser.parse_args()
  os.environ["LBT_INPUT"] = args.input
  print(f"trial: {timing.machine()}; load average {os.getloadavg()[0]:.1f}")
  results = [measure(int(b), args.rounds, args.cache, args.cold)
             for b in args.batches.split(",")]
  print_table(results, args.cold)


if __name__ == "__main__":
  main()
