"""The report's sections on searched cells: each cell's validation-best trial
(`lbt.studies.cell_search.choose`, the rule the runner searched with), the
accuracy against the batch with every cell tuned, and the best learning rate
against the batch beside the linear and square-root rules.

Every number shown is the final test accuracy of the trial that the
validation split chose; a cell whose best is not bracketed says so beside its
number, with the reason.

References:
  Goyal et al. 2017 (the linear rule), https://arxiv.org/abs/1706.02677
  Krizhevsky 2014; Hoffer et al. 2017 (the square-root rule)
  Li et al. 2024, "Surge phenomenon in optimal learning rate and batch size
    scaling" (Adam's optimum first rises, then falls), https://arxiv.org/abs/2405.14578
"""

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from lbt.reports import plots
from lbt.studies import cell_search, search_rules

# A rule "holds" at a batch when the optimum lies within this factor of it:
# one step of the √2 grid the search refines to, either way.
RULE_TOLERANCE = math.sqrt(2)
UNBRACKETED = "†"


@dataclasses.dataclass(frozen=True)
class TunedCell:
  """One searched cell as the report shows it."""
  cell: str
  rows: Tuple[dict, ...]      # every trial of the cell
  best: Optional[dict]        # the validation-best trial's row
  choice: cell_search.Choice

  @property
  def bracketed(self) -> bool:
    return self.choice.bracket.bracketed

  def mark(self) -> str:
    return "" if self.bracketed else UNBRACKETED

  def accuracy_text(self) -> str:
    """The cell's test accuracy, flagged when its search is not bracketed."""
    if self.best is None:
      return "diverged" if self.rows else "—"
    return f"{plots.pct(self.best['final_accuracy'])}{self.mark()}"


def _trial(row: dict) -> search_rules.Trial:
  lr = _rate(row)
  score = row.get("validation_accuracy")
  if row["status"] != "finished" or score is None or not math.isfinite(score):
    return search_rules.Trial(lr, search_rules.DIVERGED)
  return search_rules.Trial(lr, search_rules.FINISHED, score)


def tuned_cell(cell: str, members: Sequence[dict]) -> TunedCell:
  """A cell's finished trials and the choice among them by validation
  accuracy (`lbt.studies.cell_search.choose`, the runner's rule)."""
  members = [r for r in members if r["status"] in ("finished", "diverged")]
  examples = max((r.get("validation_examples") or 0 for r in members), default=0)
  choice = cell_search.choose([_trial(r) for r in members], max(examples, 1))
  best = None
  if choice.best is not None:
    best = next(r for r in members if math.isclose(_rate(r), choice.best.learning_rate,
                                                   rel_tol=1e-6))
  return TunedCell(cell, tuple(members), best, choice)


def _rate(row: dict) -> float:
  return row["learning_rate"] if row.get("learning_rate") is not None else (
      row["base_learning_rate"])


def tuned_cells(rows: Sequence[dict]) -> Dict[str, TunedCell]:
  """cell -> its trials and choice, for the rows of searched trials (a role
  with a learning rate), in study order."""
  by_cell: Dict[str, List[dict]] = {}
  for row in rows:
    if row.get("learning_rate") is not None and row.get("section") != "seed":
      by_cell.setdefault(row["cell"], []).append(row)
  return {cell: tuned_cell(cell, members) for cell, members in by_cell.items()}


def bracket_note(cells: Sequence[TunedCell]) -> str:
  """One line per unbracketed cell, with the search's reason."""
  lines = [f"- {UNBRACKETED} {c.cell}: {c.choice.bracket.reason}" for c in cells
           if c.best is not None and not c.bracketed]
  return "\n".join(lines) if lines else "Every tuned cell's optimum is bracketed."


def sweep_table(cells: Dict[str, TunedCell], section: str = "sweep") -> Tuple[str, list, list]:
  """The optimizer x batch table of a section's tuned cells (test accuracy of
  the validation-best trial, its trials), the update count in each header."""
  sweep = [c for c in cells.values() if c.rows[0].get("section") == section]
  optimizers = list(dict.fromkeys(c.rows[0]["optimizer"] for c in sweep))
  batches = sorted({c.rows[0]["batch_size"] for c in sweep})
  at = {(c.rows[0]["optimizer"], c.rows[0]["batch_size"]): c for c in sweep}
  updates = {}
  for c in sweep:
    if c.best is not None and c.best.get("updates"):
      updates[c.rows[0]["batch_size"]] = c.best["updates"]
  header = "| optimizer | " + " | ".join(
      f"{b:,} ({updates.get(b, '?')} upd.)" for b in batches) + " |"
  lines = [header, "|---|" + "---|" * len(batches)]
  for o in optimizers:
    lines.append(f"| {o} | " + " | ".join(
        f"{at[(o, b)].accuracy_text()} ({len(at[(o, b)].rows)})" if (o, b) in at else "—"
        for b in batches) + " |")
  return "\n".join(lines), optimizers, batches


def _effective(row: dict) -> Optional[float]:
  value = row.get("effective_learning_rate")
  return value if value is not None and math.isfinite(value) and value > 0 else None


def best_lr_series(cells: Dict[str, TunedCell], section: str = "sweep"
                   ) -> Dict[str, List[Tuple[int, float, float, float]]]:
  """optimizer -> [(batch, best effective LR, lowest and highest bracketing
  effective LR tried)], from each tuned cell of the section."""
  series: Dict[str, List[Tuple[int, float, float, float]]] = {}
  for c in cells.values():
    first = c.rows[0]
    if first.get("section") != section or c.best is None or _effective(c.best) is None:
      continue
    best = _effective(c.best)
    ratio = best / c.best["learning_rate"]  # the rule's factor at this batch
    tried = sorted(r["learning_rate"] * ratio for r in c.rows)
    low = max((lr for lr in tried if lr < best * (1 - 1e-9)), default=best)
    high = min((lr for lr in tried if lr > best * (1 + 1e-9)), default=best)
    series.setdefault(first["optimizer"], []).append((first["batch_size"], best, low, high))
  return {o: sorted(s) for o, s in series.items()}


def rule_verdict(points: Sequence[Tuple[int, float, float, float]]) -> str:
  """Where the linear and square-root rules, anchored at the smallest
  batch's optimum, stay within RULE_TOLERANCE of the optimum, and where the
  optimum stops growing (and, if it does, whether it falls again)."""
  if len(points) < 2:
    return "one batch: no rule to test"
  b0, lr0 = points[0][0], points[0][1]
  held = {}
  for name, power in (("linear", 1.0), ("square-root", 0.5)):
    held[name] = b0
    for b, lr, _, _ in points:  # the rule holds up to its first miss
      if abs(math.log(lr / (lr0 * (b / b0) ** power))) > math.log(RULE_TOLERANCE) + 1e-9:
        break
      held[name] = b
  # The optimum stops growing at the first batch that no later optimum exceeds
  # by a grid step or more (the search resolves √2).
  plateau = next((i for i in range(len(points) - 1)
                  if max(p[1] for p in points[i + 1:]) < points[i][1] * RULE_TOLERANCE * (1 - 1e-9)),
                 None)
  words = [f"linear rule within ×{RULE_TOLERANCE:.2g} up to B={held['linear']:,}",
           f"square-root rule up to B={held['square-root']:,}"]
  if plateau is not None:
    later = points[plateau + 1:]
    fall = min(lr for _, lr, _, _ in later) / points[plateau][1]
    words.append(f"the optimum stops growing at B={points[plateau][0]:,} "
                 f"(LR {points[plateau][1]:.3g})" + (
                     f" and then falls to ×{fall:.2g} of it — a rise then a fall, "
                     "the shape of Li et al.'s surge" if fall <= 1 / RULE_TOLERANCE + 1e-9
                     else ", within a grid step of it after that"))
  else:
    words.append("the optimum still grows at the largest batch")
  return "; ".join(words)


def plot_best_lr(series, limit_series, report_dir: str) -> str:
  """Best effective LR against the batch, per optimizer, with its bracket,
  the rules from the smallest batch (dotted: linear, dashed: square root),
  and the steps-to-target optima (crosses) where the study measured them."""
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for optimizer, points in series.items():
    b = np.array([p[0] for p in points], float)
    lr = np.array([p[1] for p in points], float)
    low = np.array([p[2] for p in points], float)
    high = np.array([p[3] for p in points], float)
    line, = ax.plot(b, lr, "o-", label=optimizer)
    ax.fill_between(b, low, high, color=line.get_color(), alpha=0.15)
    ax.plot(b, lr[0] * b / b[0], ":", color=line.get_color(), lw=1)
    ax.plot(b, lr[0] * np.sqrt(b / b[0]), "--", color=line.get_color(), lw=1)
    if optimizer in limit_series:
      lb, llr = zip(*limit_series[optimizer])
      ax.plot(lb, llr, "x", color=line.get_color(), ms=8)
  ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="best effective learning rate",
         title="Best learning rate against the batch (band: the trials on each side)")
  plots.legend(ax, fontsize=7)
  return plots.save(fig, report_dir, "best_learning_rate.png")


def _limit_series(limits: Dict[str, dict]) -> Dict[str, List[Tuple[int, float]]]:
  """optimizer -> [(batch, best constant LR to the target)] from limit.json."""
  return {label: [(r["batch"], r["best_learning_rate"]) for r in s["batches"]
                  if r.get("best_learning_rate")] for label, s in limits.items()}


def section_best_lr(rows: Sequence[dict], limits: Dict[str, dict], report_dir: str) -> str:
  """§3: the tuned optimum against the batch, per optimizer, against the rules."""
  title = "## 9. The best learning rate against the batch\n\n"
  cells = tuned_cells(rows)
  series = best_lr_series(cells)
  if not series:
    return (title + "No cell of the sweep was searched, so no optimum to plot: every "
            "point ran at its scaling rule's learning rate.\n")
  image = plot_best_lr(series, _limit_series(limits), report_dir)
  lines = ["| optimizer | " + " | ".join(
      f"B={b:,}" for b in sorted({p[0] for s in series.values() for p in s})) + " |"]
  batches = sorted({p[0] for s in series.values() for p in s})
  lines.append("|---|" + "---|" * len(batches))
  for optimizer, points in series.items():
    at = {b: (lr, low, high) for b, lr, low, high in points}
    lines.append(f"| {optimizer} | " + " | ".join(
        f"{at[b][0]:.3g} [{at[b][1]:.3g}, {at[b][2]:.3g}]" if b in at else "—"
        for b in batches) + " |")
  verdicts = "\n".join(f"- **{o}**: {rule_verdict(p)}." for o, p in series.items())
  limit_text = ("Crosses: the best constant learning rate to the target of §2's "
                "steps-to-target protocol (no warmup, no decay: its optimum need not "
                "equal the equal-epoch one). " if limits else "")
  return (title + "The effective (peak) learning rate of each sweep cell's validation-best "
          "trial, with the trials on each side of it (brackets, band); dotted: the "
          "linear rule from the smallest batch's optimum, dashed: the square-root rule. "
          f"A rule holds where the optimum lies within ×{RULE_TOLERANCE:.2g} of it. "
          f"{limit_text}\n\n{image}\n\n" + "\n".join(lines) + f"\n\n{verdicts}\n\n"
          + bracket_note([c for c in cells.values() if c.rows[0].get("section") == "sweep"])
          + "\n")


def seed_spread(rows: Sequence[dict]) -> Dict[str, Tuple[float, int]]:
  """cell -> (range of test accuracy over its seeds, seeds) where the study
  reran a chosen learning rate with more seeds (the chosen trial is seed 0)."""
  cells = tuned_cells(rows)
  reruns: Dict[str, List[float]] = {}
  for row in rows:
    if row.get("section") == "seed" and row["status"] == "finished":
      reruns.setdefault(row["seed_of"], []).append(row["final_accuracy"])
  spread = {}
  for cell, accuracies in reruns.items():
    best = cells.get(cell)
    if best is not None and best.best is not None:
      values = accuracies + [best.best["final_accuracy"]]
      spread[cell] = (max(values) - min(values), len(values))
  return spread


def section_costs(rows: Sequence[dict]) -> str:
  """What each section cost: its points (trials) and training time."""
  by_section: Dict[str, List[dict]] = {}
  for row in rows:
    by_section.setdefault(row.get("section") or "—", []).append(row)
  lines = ["| section | points (trials) | cells | training time (min) |", "|---|---|---|---|"]
  for section, members in by_section.items():
    minutes = sum(r.get("wall_time_s") or 0 for r in members) / 60
    lines.append(f"| {section} | {len(members)} | {len({r['cell'] for r in members})} | "
                 f"{minutes:.1f} |")
  spread = seed_spread(rows)
  spread_text = "\n".join(
      f"- `{cell}`: {100 * width:.2f} points over {n} seeds" for cell, (width, n) in
      spread.items()) or "- no cell was rerun with other seeds"
  return ("## 10. What each section cost, and the seed-to-seed spread\n\n"
          + "\n".join(lines) + "\n\nThe range of test accuracy over seeds at the chosen "
          "learning rate (differences between cells smaller than the widest range are "
          f"ties):\n\n{spread_text}\n")
