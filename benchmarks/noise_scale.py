"""What the gradient noise scale costs, and B_simple over a Fashion-MNIST run.

  python benchmarks/noise_scale.py [--seconds=8] [--models=mlp,lenet5,resnet_tiny]
      [--batch=1024] [--microbatch=128] [--epochs=3] [--train_model=lenet5]

lbt measures B_simple (McCandlish et al. 2018, App. A) from gradient
accumulation: `lbt.engine.step.add_microbatch` adds |g_k|^2 of each microbatch's mean
gradient, and the loop turns it and |G_B|^2 into the estimate on the host
(`lbt.stats.noise_scale.gradient_noise_scale`, then `smoothed_noise_scale`'s EMA).
Three tables:

1. Its cost when the update accumulates anyway (n >= 2 microbatches): lbt's
   jitted `add` program (`lbt.engine.programs.compile_update(...).programs['add']`)
   against the same program built from an `add_microbatch` whose |g_k|^2 output
   is discarded, so that XLA drops the norm (checked: the FLOPs of the two
   compiled programs and the sqrt in their HLO). Timed interleaved in one
   process with a second copy of lbt's program (the A/A difference is the
   noise floor of the readings), as many rounds as fit in --seconds; the cost
   is n x (with - without) as % of lbt's accumulated update of n = 4
   microbatches (start, n adds, finish; timed after). The host side (the
   estimator and the EMA, each called once per update) is timed on its own.
   Goal: <= 2 % of the step; where |with - without| is within the A/A
   difference the cost is below what the reading resolves, and the row is
   met if that floor is, else unresolved.
2. The cost of `config.noise_scale_split` (a one-microbatch batch run as two
   halves so that the estimate exists): the fused one-shot update against the
   two-microbatch update of the same batch, interleaved.
3. B_simple, |G|^2 and tr(Sigma) as logged while training LeNet-5 on
   Fashion-MNIST with accumulation (`lbt.engine.train.train_and_evaluate`, a
   temporary workdir), and per window the raw per-update ratio against the
   ratio of the window's averages.
"""

import os
import re

# One CPU device, as run_all.py gives every benchmark (before jax is imported).
os.environ["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                                 os.environ.get("XLA_FLAGS", "")).strip()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import functools  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_platforms", "cpu")

from benchmarks import roofline, run_all, timing  # noqa: E402
from configs import fashion_mnist  # noqa: E402
import optax  # noqa: E402
from lbt.io import metrics as metrics_lib
from lbt import models, optim
from lbt.engine import parallel, programs
from lbt.stats import noise_scale
from lbt.engine import step, train
from lbt.data import catalog, fashion_mnist as fashion_mnist_data  # noqa: E402

# (model, microbatch, image side, channels) of the cost table.
COST_CASES = (("mlp", 256, 28, 1), ("mlp", 1024, 28, 1), ("lenet5", 256, 28, 1),
              ("lenet5", 1024, 28, 1), ("resnet_tiny", 256, 28, 1), ("resnet20", 256, 32, 3))
ACCUMULATED = 4          # n: microbatches of the accumulated update.
SPLIT_CASES = (("mlp", 256), ("mlp", 1024), ("lenet5", 256), ("lenet5", 1024))
GOAL_PERCENT = 2.0
SHOWN_UPDATES = (1, 5, 10, 20, 50, 100, 200, 500)
WINDOW_EDGES = (0, 10, 25, 50, 100, 200, 400, 800)


class Setup:
  """One model's lbt update programs on one CPU device, and its inputs."""

  def __init__(self, name: str, side: int = 28, channels: int = 1):
    self.mesh = parallel.create_mesh()
    self.model = models.create(name, num_classes=10)
    self.tx = optax.inject_hyperparams(lambda learning_rate: optim.create_by_name(
        "momentum", learning_rate, weight_decay=5e-4))(learning_rate=0.01)
    self.shape = (side, side, channels)
    self.init = jax.jit(functools.partial(step.create_train_state, model=self.model,
                                          tx=self.tx, input_shape=self.shape),
                        out_shardings=parallel.replicated(self.mesh))
    self.params_init = self.state().params
    self.rng = np.random.default_rng(0)

  def state(self):
    return self.init(jax.random.PRNGKey(0))

  def batch(self, size: int):
    return parallel.to_global({
        "image": self.rng.normal(size=(size,) + self.shape).astype(np.float32),
        "label": self.rng.integers(0, 10, size).astype(np.int32)}, self.mesh)

  def update(self, num_microbatches: int):
    """`lbt.engine.programs.compile_update`'s update, the program a run executes."""
    return programs.compile_update(self.model, self.tx, lambda count: 0.01, self.mesh,
                                num_microbatches, 0.0)


def update_runner(update, state, microbatches, params_init):
  """`roofline.runner` of a run's update at the schedule's start (the
  update takes where on the schedule it is as an input)."""
  return roofline.runner(functools.partial(update, lr_position=0), state, microbatches,
                         params_init)


def discarding_norm(add_microbatch):
  """`add_microbatch` whose |g_k|^2 sum is passed through unchanged: the norm
  is then dead code, which XLA removes."""
  @functools.wraps(add_microbatch)
  def add(state, sums, microbatch, **kwargs):
    return add_microbatch(state, sums, microbatch, **kwargs).replace(
        microbatch_grad_sq_norm=sums.microbatch_grad_sq_norm)
  return add


@contextlib.contextmanager
def without_norm():
  """Programs compiled inside see `discarding_norm(step.add_microbatch)`."""
  original = step.add_microbatch
  step.add_microbatch = discarding_norm(original)
  try:
    yield
  finally:
    step.add_microbatch = original


def add_runner(program, state, microbatch):
  """A call of an `add` program on its own running sums (donated: a copy, not
  the state's BN statistics)."""
  holder = [jax.tree.map(jnp.copy, step.start_update(state))]

  def run():
    holder[0], count = program(state, holder[0], microbatch)
    return holder[0], count
  return run


def calibrated(calls, seconds: float, min_rounds: int = 15, max_rounds: int = 1000):
  """timing.interleaved with as many rounds as fit in about `seconds`."""
  one = timing.interleaved(calls, rounds=1, warmup=2)
  rounds = int(min(max_rounds, max(min_rounds, seconds / sum(one.values()))))
  return timing.interleaved(calls, rounds, warmup=0), rounds


def hlo_sqrts(program, *args) -> int:
  return len(re.findall(r" sqrt\(", program.lower(*args).compile().as_text()))


def host_estimate_us(reps: int = 3000) -> float:
  """µs of the host's per-update work: the estimator and the EMA, as `_train`
  calls them (here both once per update), median of 5 timings."""
  rng = np.random.default_rng(0)
  big = rng.uniform(0.5, 1.0, reps)
  small = big + rng.uniform(0.0, 1.0, reps)
  per_call = []
  for _ in range(5):
    state = (0.0, 0.0, 0)
    start = time.perf_counter()
    for i in range(reps):
      grad_sq, trace = noise_scale.gradient_noise_scale(small[i], big[i], 256, 1024)
      _, state = noise_scale.smoothed_noise_scale([grad_sq], [trace], state)
    per_call.append((time.perf_counter() - start) / reps)
  return 1e6 * statistics.median(per_call)


def cost_table(names, seconds: float) -> None:
  host_us = host_estimate_us()
  print(f"\n1. Cost of the estimate when the update accumulates (n = {ACCUMULATED}); "
        f"host estimator + EMA {host_us:.1f} us per update; goal <= {GOAL_PERCENT:g} % of "
        "the step")
  print("| model | microbatch | params | dFLOPs (2 x params) | sqrt in HLO | rounds | "
        "add us (with) | add us (without) | norm us / microbatch | A/A us | "
        f"update ms (n={ACCUMULATED}) | device % | host % | total % | <= {GOAL_PERCENT:g} % |")
  print("|---" * 15 + "|")
  for name, micro, side, channels in COST_CASES:
    if name not in names:
      continue
    setup = Setup(name, side, channels)
    microbatch = setup.batch(micro)
    lbt_add = setup.update(ACCUMULATED).programs["add"]
    with without_norm():
      bare_add = setup.update(ACCUMULATED).programs["add"]
    state = setup.state()
    sums = step.start_update(state)
    flops = [timing.compiled_flops(p, state, sums, microbatch) for p in (lbt_add, bare_add)]
    sqrts = [hlo_sqrts(p, state, sums, microbatch) for p in (lbt_add, bare_add)]
    params = sum(p.size for p in jax.tree.leaves(state.params))
    times, rounds = calibrated({
        "with": add_runner(lbt_add, state, microbatch),
        "without": add_runner(bare_add, state, microbatch),
        "with (A/A)": add_runner(lbt_add, state, microbatch)}, seconds)
    # The denominator only: a few rounds of it, outside the interleaved three.
    update = timing.interleaved({"update": update_runner(
        setup.update(ACCUMULATED), setup.state(), [microbatch] * ACCUMULATED,
        setup.params_init)}, rounds=3)["update"]
    delta = times["with"] - times["without"]
    noise = abs(times["with"] - times["with (A/A)"])
    device = 100 * ACCUMULATED * delta / update
    host = 100 * 1e-6 * host_us / update
    total = device + host
    verdict = "yes" if total <= GOAL_PERCENT else "NO"
    if abs(delta) <= noise:  # The cost is below what this reading can resolve.
      floor = 100 * ACCUMULATED * noise / update + host
      verdict = ("yes (below the A/A floor)" if floor <= GOAL_PERCENT
                 else f"unresolved (A/A floor {floor:.1f} %)")
    us = lambda seconds: f"{1e6 * seconds:.0f}"
    print(f"| {name} | {micro} | {params:,} | {flops[0] - flops[1]:,.0f} ({2 * params:,}) | "
          f"{sqrts[0]} / {sqrts[1]} | {rounds} | {us(times['with'])} | "
          f"{us(times['without'])} | {us(delta)} | {us(noise)} | {1e3 * update:.1f} | "
          f"{device:.2f} | {host:.3f} | {total:.2f} | {verdict} |", flush=True)


def split_table(names, seconds: float) -> None:
  print("\n2. Cost of noise_scale_split: the fused one-shot update against two "
        "microbatches of half the batch (the same B), interleaved")
  print("| model | B | rounds | one-shot ms | split (2 x B/2) ms | split / one-shot |")
  print("|---|---|---|---|---|---|")
  for name, batch in SPLIT_CASES:
    if name not in names:
      continue
    setup = Setup(name)
    whole = setup.batch(batch)
    halves = [jax.tree.map(lambda x, i=i: x[i * batch // 2:(i + 1) * batch // 2], whole)
              for i in range(2)]
    times, rounds = calibrated({
        "one-shot": update_runner(setup.update(1), setup.state(), [whole],
                                  setup.params_init),
        "split": update_runner(setup.update(2), setup.state(), halves,
                               setup.params_init)}, seconds)
    print(f"| {name} | {batch} | {rounds} | {1e3 * times['one-shot']:.1f} | "
          f"{1e3 * times['split']:.1f} | {times['split'] / times['one-shot']:.3f} |",
          flush=True)


def training_table(args) -> None:
  arg = (f"momentum,batch={args.batch},model={args.train_model},epochs={args.epochs:g}")
  config = fashion_mnist.get_config(arg)
  config.microbatch_size = args.microbatch
  config.dataset.data_dir = catalog.default_data_dir()
  fashion_mnist_data.prepare(config.dataset.data_dir)
  with tempfile.TemporaryDirectory() as workdir:
    summary = train.train_and_evaluate(config, workdir)
    rows = metrics_lib.read_jsonl(workdir, "train")
  n = -(-args.batch // args.microbatch)
  if "b_simple" not in rows[0]:
    print(f"\n3. no B_simple: the batch {args.batch} is one microbatch (needs >= 2)")
    return
  last = rows[-1]["step"]
  print(f"\n3. B_simple over training: configs/fashion_mnist.py:{arg}, microbatch "
        f"{args.microbatch} (n = {n}), {last} updates, test accuracy "
        f"{summary['eval_accuracy']:.4f}, {summary['wall_time_s']:.0f} s; b_simple is "
        f"EMA[tr(Sigma)] / EMA[|G|^2] (decay {noise_scale.NOISE_SCALE_DECAY})")
  print("| update | learning rate | loss | train accuracy | noise_grad_sq (|G|^2) | "
        "noise_trace (tr Sigma) | raw ratio | b_simple |")
  print("|---" * 8 + "|")
  by_step = {r["step"]: r for r in rows}
  for update in sorted({u for u in SHOWN_UPDATES if u < last} | {last}):
    r = by_step[update]
    print(f"| {update} | {r['learning_rate']:.4f} | {r['loss']:.4f} | {r['accuracy']:.4f} | {r['noise_grad_sq']:.4g} | "
          f"{r['noise_trace']:.4g} | {r['noise_trace'] / r['noise_grad_sq']:.4g} | "
          f"{r['b_simple']:.4g} |")
  grad_sq = np.array([r["noise_grad_sq"] for r in rows])
  trace = np.array([r["noise_trace"] for r in rows])
  print("\n| updates | mean of raw ratio | median of raw ratio | mean tr / mean |G|^2 | "
        "updates with |G|^2 < 0 | b_simple at the window's end |")
  print("|---|---|---|---|---|---|")
  edges = [e for e in WINDOW_EDGES if e < last] + [last]
  for lo, hi in zip(edges, edges[1:]):
    g, t = grad_sq[lo:hi], trace[lo:hi]
    print(f"| {lo + 1}-{hi} | {np.mean(t / g):.4g} | {np.median(t / g):.4g} | "
          f"{np.mean(t) / np.mean(g):.4g} | {int(np.sum(g < 0))} of {hi - lo} | "
          f"{by_step[hi]['b_simple']:.4g} |")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seconds", type=float, default=8.0,
                      help="timing budget per row of tables 1 and 2")
  parser.add_argument("--models", default="mlp,lenet5,resnet_tiny",
                      help="models of tables 1 and 2 (resnet20 too: ~1 s a microbatch)")
  parser.add_argument("--batch", type=int, default=1024, help="table 3's batch")
  parser.add_argument("--microbatch", type=int, default=128, help="table 3's microbatch")
  parser.add_argument("--epochs", type=float, default=3.0, help="table 3's epochs")
  parser.add_argument("--train_model", default="lenet5", help="table 3's model")
  parser.add_argument("--tables", default="1,2,3")
  args = parser.parse_args()
  names, tables = args.models.split(","), args.tables.split(",")
  load = os.getloadavg()
  print(f"noise scale: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; "
        f"{timing.machine()}; {run_all.versions()}; load average {load[0]:.1f}")
  if "1" in tables:
    cost_table(names, args.seconds)
  if "2" in tables:
    split_table(names, args.seconds)
  if "3" in tables:
    training_table(args)
  print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()
