"""§9 and §10 of a study's report: the best learning rate against the batch,
and what each section cost.

§9 reads each searched sweep cell's choice as the runner wrote it
(`lbt.reports.choice`): the chosen base learning rate and the range of rates
tied with it (tied_low..tied_high), scaled to the effective (peak) learning
rate by the cell's rule factor. Every verdict is made against those ranges,
widened by RULE_TOLERANCE (one step of the √2 grid) on each side:

- a scaling rule (linear, square root), anchored at the smallest batch's
  range, holds at a batch when the range it predicts meets the widened range
  there; it holds up to its first miss;
- the optimum stops growing at the first batch above whose range no later
  batch's range lies (by a grid step or more), and then falls, the shape of
  Li et al.'s surge, when a later range lies a grid step or more below it.

References:
  Goyal et al. 2017 (the linear rule), https://arxiv.org/abs/1706.02677
  Krizhevsky 2014; Hoffer et al. 2017 (the square-root rule)
  Li et al. 2024, "Surge phenomenon in optimal learning rate and batch size
    scaling" (Adam's optimum first rises, then falls), https://arxiv.org/abs/2405.14578
"""

import math
from typing import Dict, List, NamedTuple, Sequence, Tuple

import numpy as np

from lbt.reports import plots
from lbt.reports.choice import UNBRACKETED, CellResult

RULE_TOLERANCE = math.sqrt(2)
_EPS = 1e-9


class Optimum(NamedTuple):
  """A cell's best effective learning rate and the range tied with it."""
  batch: int
  rate: float
  low: float
  high: float
  bracketed: bool = True


def _ratio(row: dict) -> float:
  """The effective LR per unit of base LR at this cell (its rule's factor)."""
  effective, base = row.get("effective_learning_rate"), row.get("base_learning_rate")
  if effective and base and math.isfinite(effective) and effective > 0 and base > 0:
    return effective / base
  return 1.0


def best_lr_series(found: Dict[str, CellResult], section: str = "sweep"
                   ) -> Dict[str, List[Optimum]]:
  """optimizer -> its searched cells' optima by batch, from their choices."""
  series: Dict[str, List[Optimum]] = {}
  for cell in found.values():
    choice, row = cell.choice, cell.row
    if row["section"] != section or choice is None or choice.get("learning_rate") is None:
      continue
    ratio = _ratio(row)
    low, high = choice.get("tied_low"), choice.get("tied_high")
    rate = choice["learning_rate"]
    series.setdefault(row["optimizer"], []).append(Optimum(
        row["batch_size"], ratio * rate, ratio * (low or rate), ratio * (high or rate),
        bool(choice.get("bracketed"))))
  return {o: sorted(s) for o, s in series.items()}


def _rule_holds_to(points: Sequence[Optimum], power: float) -> int:
  """The largest batch up to which the rule's predicted range meets the
  widened tied range at every batch."""
  first, held = points[0], points[0].batch
  for p in points:
    scale = (p.batch / first.batch) ** power
    if (first.low * scale > p.high * RULE_TOLERANCE * (1 + _EPS)
        or first.high * scale < p.low / RULE_TOLERANCE * (1 - _EPS)):
      break
    held = p.batch
  return held


def _growth(points: Sequence[Optimum]) -> str:
  """Where the optimum stops growing, and whether it then falls."""
  for i, p in enumerate(points[:-1]):
    later = points[i + 1:]
    if any(q.low >= p.high * RULE_TOLERANCE * (1 - _EPS) for q in later):
      continue
    text = f"the optimum stops growing at B={p.batch:,} (tied {p.low:.3g}–{p.high:.3g})"
    fallen = [q for q in later if q.high <= p.low / RULE_TOLERANCE * (1 + _EPS)]
    if fallen:
      return text + (f" and then falls (B={fallen[0].batch:,}: tied {fallen[0].low:.3g}–"
                     f"{fallen[0].high:.3g}, a grid step or more below) — a rise then a "
                     "fall, the shape of Li et al.'s surge")
    return text + ", and no later range lies a grid step below it"
  return "the optimum still grows at the largest batch"


def rule_verdict(points: Sequence[Optimum]) -> str:
  """The rule verdicts of one optimizer's optima (see the module docstring)."""
  if len(points) < 2:
    return "one batch: no rule to test"
  unbracketed = [p.batch for p in points if not p.bracketed]
  words = [f"linear rule within ×{RULE_TOLERANCE:.2g} of the tied ranges up to "
           f"B={_rule_holds_to(points, 1.0):,}",
           f"square-root rule up to B={_rule_holds_to(points, 0.5):,}", _growth(points)]
  if unbracketed:
    words.append("unbracketed optima (their true range may reach further) at B="
                 + ", ".join(f"{b:,}" for b in unbracketed))
  return "; ".join(words)


def plot_best_lr(series, limit_series, report_dir: str) -> str:
  """Best effective LR against the batch, per optimizer, with its tied range,
  the rules from the smallest batch (dotted: linear, dashed: square root),
  and the steps-to-target optima (crosses) where the study measured them."""
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for optimizer, points in series.items():
    b = np.array([p.batch for p in points], float)
    lr = np.array([p.rate for p in points], float)
    line, = ax.plot(b, lr, "o-", label=optimizer)
    ax.fill_between(b, [p.low for p in points], [p.high for p in points],
                    color=line.get_color(), alpha=0.15)
    ax.plot(b, lr[0] * b / b[0], ":", color=line.get_color(), lw=1)
    ax.plot(b, lr[0] * np.sqrt(b / b[0]), "--", color=line.get_color(), lw=1)
    if limit_series.get(optimizer):
      lb, llr = zip(*limit_series[optimizer])
      ax.plot(lb, llr, "x", color=line.get_color(), ms=8)
  ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="best effective learning rate",
         title="Best learning rate against the batch (band: the tied range)")
  plots.legend(ax, fontsize=7)
  return plots.save(fig, report_dir, "best_learning_rate.png")


def _limit_series(limits: Dict[str, dict]) -> Dict[str, List[Tuple[int, float]]]:
  """optimizer -> [(batch, best constant LR to the target)] from limit.json."""
  return {label: [(r["batch"], r["best_learning_rate"]) for r in s["batches"]
                  if r.get("best_learning_rate")] for label, s in limits.items()}


def _table(series: Dict[str, List[Optimum]]) -> str:
  batches = sorted({p.batch for s in series.values() for p in s})
  lines = ["| optimizer | " + " | ".join(f"B={b:,}" for b in batches) + " |",
           "|---|" + "---|" * len(batches)]
  for optimizer, points in series.items():
    at = {p.batch: p for p in points}
    lines.append(f"| {optimizer} | " + " | ".join(
        f"{at[b].rate:.3g} [{at[b].low:.3g}–{at[b].high:.3g}]"
        f"{'' if at[b].bracketed else UNBRACKETED}" if b in at else "—"
        for b in batches) + " |")
  return "\n".join(lines)


def section_best_lr(found: Dict[str, CellResult], limits: Dict[str, dict], report_dir: str) -> str:
  """§9: the tuned optimum against the batch, per optimizer, against the rules."""
  title = "## 9. The best learning rate against the batch\n\n"
  series = best_lr_series(found)
  if not series:
    return (title + "No cell of the sweep has a finished search, so no optimum to plot: "
            "every point ran at its scaling rule's learning rate, or its search is still "
            "running.\n")
  image = plot_best_lr(series, _limit_series(limits), report_dir)
  verdicts = "\n".join(f"- **{o}**: {rule_verdict(p)}." for o, p in series.items())
  limit_text = ("Crosses: the best constant learning rate to the target of §2's "
                "steps-to-target protocol (no warmup, no decay: its optimum need not "
                "equal the equal-epoch one). " if limits else "")
  return (title + "The effective (peak) learning rate each sweep cell's search chose, with "
          "the range of rates tied with it on the validation split (brackets, band; "
          f"{UNBRACKETED}: not bracketed, §1 lists why); dotted: the linear rule from the "
          "smallest batch's optimum, dashed: the square-root rule. A rule holds at a batch "
          "where the range it predicts from the smallest batch's range meets the tied range "
          f"widened by ×{RULE_TOLERANCE:.2g} on each side. {limit_text}\n\n{image}\n\n"
          + _table(series) + f"\n\n{verdicts}\n")


def section_costs(rows: Sequence[dict], found: Dict[str, CellResult]) -> str:
  """§10: each section's points (trials and seeds) and training time, and the
  seeds behind each compared number."""
  by_section: Dict[str, List[dict]] = {}
  for row in rows:
    by_section.setdefault(row.get("section") or "—", []).append(row)
  lines = ["| section | points (trials) | cells | training time (min) |", "|---|---|---|---|"]
  for section, members in by_section.items():
    minutes = sum(r.get("wall_time_s") or 0 for r in members) / 60
    lines.append(f"| {section} | {len(members)} | {len({r['cell'] for r in members})} | "
                 f"{minutes:.1f} |")
  seeds = sorted(c.estimate.n for c in found.values() if c.estimate is not None)
  seed_text = (f"Seeds behind each cell's mean: {seeds[0]} to {seeds[-1]} "
               f"({sum(n >= 3 for n in seeds)} of {len(seeds)} cells with 3 or more)."
               if seeds else "No cell has finished.")
  return ("## 10. What each section cost\n\n" + "\n".join(lines) + f"\n\n{seed_text}\n")
