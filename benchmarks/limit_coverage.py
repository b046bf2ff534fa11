"""How often B_crit's interval covers the truth, under lbt.limit's own batch rule.

  python benchmarks/limit_coverage.py [--sweeps=1000] [--starts=1/16,1/4,1,4,16]
      [--noise=0.05,0.1,0.2] [--level=0.9] [--max_batch=1048576]

A fixed grid of batches around B_crit is not what `lbt.limit` fits: its
batches double from the config's batch and stop where two successive
doublings each cut S(B) by less than 10 % (`lbt.studies.limit_rules.
next_batch`, deciding on the noisy S it has measured), so a sweep that
starts above B_crit ends after three batches on a nearly flat S, and one
that starts below it runs to about 16-32·B_crit. Each simulated sweep draws
S(B) = S_min(1 + B_crit/B) with lognormal relative noise, rounded to whole
updates as the protocol counts them, at the batches the rule asks for, then
fits them as `limit_protocol.summarize` does (`fit_limit`, 90 % by default).
One row per start (as a multiple of B_crit) and noise level: the batches
measured (median, range), the coverage with its binomial standard error, and
what the intervals bound. Nothing may raise.
"""

import argparse
import math
import os
import sys
import time
from fractions import Fraction

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lbt.stats import steps_to_target  # noqa: E402
from lbt.studies import limit_rules  # noqa: E402

B_CRIT, S_MIN = 1024, 100.0


def sweep(rng: np.random.Generator, start: int, max_batch: int, sigma: float
          ) -> dict:
  """batch -> S, measured in the order and up to the stop of next_batch."""
  measured = {}
  while (batch := limit_rules.next_batch(measured, start=start, max_batch=max_batch)):
    truth = S_MIN * (1 + B_CRIT / batch)
    measured[batch] = float(max(1, round(truth * math.exp(sigma * rng.standard_normal()))))
  return measured


def cell(ratio: Fraction, sigma: float, sweeps: int, args) -> dict:
  """The coverage of one start and noise level over `sweeps` seeded sweeps."""
  start = int(B_CRIT * ratio)
  covered, sizes = 0, []
  kinds = dict.fromkeys((steps_to_target.TWO_SIDED, steps_to_target.LOWER_ONLY,
                         steps_to_target.UPPER_ONLY, steps_to_target.UNBOUNDED), 0)
  for i in range(sweeps):
    rng = np.random.default_rng([start, int(sigma * 1000), i])
    measured = sweep(rng, start, args.max_batch, sigma)
    fit = steps_to_target.fit_limit(list(measured), list(measured.values()), level=args.level)
    covered += fit.b_crit_low <= B_CRIT <= fit.b_crit_high
    kinds[fit.bounded] += 1
    sizes.append(len(measured))
  p = covered / sweeps
  return {"start": ratio, "sigma": sigma, "sizes": sizes, "coverage": p,
          "se": math.sqrt(p * (1 - p) / sweeps), "kinds": kinds, "sweeps": sweeps}


def table(rows) -> str:
  lines = ["| start / B_crit | noise | sweeps | batches, median (range) | coverage ± s.e. | "
           "two-sided | lower only | upper only | none |", "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    share = {k: f"{100 * v / r['sweeps']:.0f} %" for k, v in r["kinds"].items()}
    lines.append(
        f"| {r['start']} | {r['sigma']:.0%} | {r['sweeps']} | {int(np.median(r['sizes']))} "
        f"({min(r['sizes'])}–{max(r['sizes'])}) | {r['coverage']:.3f} ± {r['se']:.3f} | "
        f"{share[steps_to_target.TWO_SIDED]} | {share[steps_to_target.LOWER_ONLY]} | "
        f"{share[steps_to_target.UPPER_ONLY]} | {share[steps_to_target.UNBOUNDED]} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sweeps", type=int, default=1000)
  parser.add_argument("--starts", default="1/16,1/4,1,4,16",
                      help="first batches, as multiples of B_crit")
  parser.add_argument("--noise", default="0.05,0.1,0.2", help="lognormal sigma of S")
  parser.add_argument("--level", type=float, default=0.9)
  parser.add_argument("--max_batch", type=int, default=2 ** 20)
  args = parser.parse_args()
  began = time.perf_counter()
  rows = [cell(Fraction(ratio), float(sigma), args.sweeps, args)
          for ratio in args.starts.split(",") for sigma in args.noise.split(",")]
  total = sum(r["sweeps"] for r in rows)
  pooled = sum(r["coverage"] * r["sweeps"] for r in rows) / total
  print(f"B_crit = {B_CRIT}, S_min = {S_MIN:g}, nominal level {args.level:.0%}, "
        f"max_batch {args.max_batch}\n\n{table(rows)}\n\nPooled coverage {pooled:.3f} over "
        f"{total} sweeps; lowest cell {min(r['coverage'] for r in rows):.3f}. "
        f"{time.perf_counter() - began:.0f} s.")


if __name__ == "__main__":
  main()
