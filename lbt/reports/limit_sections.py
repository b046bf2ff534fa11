"""The report's section on the critical batch, as measured by the steps-to-
target protocol that the study ran for its optimizers (DIR/limits/<label>/
limit.json, `lbt.studies.limit_protocol`): S(B) and E(B) at the best constant
learning rate of every batch, the one fit of S(B) = S_min(1 + B_noise/B) with
its interval, and B_simple at the target. No critical batch here is fitted to
equal-epoch points: those answer a different question (accuracy at a fixed
budget), and a fit to them extrapolates.
"""

import json
import os
from typing import Dict, Optional

import numpy as np

from lbt.io import files, layout
from lbt.reports import limit_report, plots
from lbt.reports.plots import g
from lbt.studies import limit_rules

CAVEAT = ("With BatchNorm the two halves of a batch are not independent draws (each is "
          "normalised by statistics of its own half), so B_simple from them is an estimate "
          "of the noise scale, not the exact quantity of McCandlish et al.; the study's MLP "
          "has no BatchNorm unless its config adds it.")


def load_limits(workdir: str) -> Dict[str, dict]:
  """label -> limit.json, for every protocol the study ran (none: {})."""
  root = os.path.join(workdir, layout.LIMITS)
  if not files.path(root).is_dir():
    return {}
  found = {}
  for label in sorted(p.name for p in files.path(root).iterdir()):
    text = files.read_text(os.path.join(root, label, layout.LIMIT))
    if text:
      found[label] = json.loads(text)
  return found


def b_crit_of(summary: dict) -> Optional[float]:
  """The measured B_crit when the fit gives a finite, positive one."""
  value = summary.get("b_crit")
  return value if value is not None and 0 < value < float("inf") else None


def unbracketed_text(summary: dict) -> str:
  """The batches whose optimum the search did not bracket, each with its
  reason and whether the fit used it; "" when every batch is bracketed."""
  marks = []
  for row in summary["batches"]:
    if row.get("bracketed", True):
      continue
    used = row.get("used_in_fit")
    fit = ("the fit used it" if used else "the fit left it out") if used is not None else (
        "whether the fit used it is not recorded")
    marks.append(f"B={row['batch']:,} ({limit_report.reason(row)}; {fit})")
  return (" Optimum not bracketed at " + "; ".join(marks) + ".") if marks else ""


def section_measured_limit(limits: Dict[str, dict], report_dir: str) -> str:
  """§2: updates and examples to the target, per optimizer, and B_crit."""
  title = "## 2. Updates and examples to the target: the critical batch, measured\n\n"
  if not limits:
    return (title + "This study ran no steps-to-target protocol (its study file declares "
            "none), so it measures no critical batch; `python -m lbt.limit` does.\n")
  plt = plots.pyplot()
  fig, (ax_s, ax_e) = plt.subplots(1, 2, figsize=(11, 4))
  lines = ["| optimizer | B_crit | interval | bounded | S_min | E_min | doubling stops at | "
           "B_simple at target (median) | trials |", "|---|---|---|---|---|---|---|---|---|"]
  text = []
  for label, s in limits.items():
    reached = [r for r in s["batches"] if r["reached"]]
    trials = sum(r["trials"] for r in s["batches"])
    lines.append(f"| {label} | {g(s['b_crit'])} | {g(s['b_crit_low'])}–{g(s['b_crit_high'])}"
                 f" | {s.get('bounded', '—')} | {g(s['s_min'])} | {g(s['e_min'])} | "
                 f"{s['doubling_stops_at'] or '—'} | {g(s.get('b_simple_median'))} | "
                 f"{trials} |")
    text.append(f"- **{label}**: {limit_report.headline(s)}{unbracketed_text(s)}")
    if not reached:
      continue
    b = np.array([r["batch"] for r in reached], float)
    steps = np.array([r["updates_to_target"] for r in reached], float)
    line, = ax_s.loglog(b, steps, "o", label=label)
    ax_e.loglog(b, b * steps, "o", color=line.get_color(), label=label)
    if b_crit_of(s) is not None and s["s_min"] > 0:
      grid = np.geomspace(b.min(), b.max(), 60)
      ax_s.loglog(grid, s["s_min"] + s["e_min"] / grid, "-", color=line.get_color(), lw=1)
      ax_e.loglog(grid, grid * s["s_min"] + s["e_min"], "-", color=line.get_color(), lw=1)
      for ax, y in ((ax_s, s["s_min"] * 2), (ax_e, s["e_min"] * 2)):
        ax.plot([s["b_crit"]], [y], "|", ms=14, color=line.get_color())
  for ax, what in ((ax_s, "updates"), (ax_e, "examples")):
    ax.set(xlabel="batch size", ylabel=f"{what} to target")
    plots.legend(ax, fontsize=7)
  image = plots.save(fig, report_dir, "updates_to_target.png")
  target = next(iter(limits.values()))["target"]
  return (title + f"Steps to a validation accuracy of {target:g} at the best constant "
          "learning rate of every batch (no warmup: a warmup inflates S at small batches), "
          "the learning rate searched per batch until bracketed (Shallue et al. 2019; a batch "
          "whose optimum is not bracketed is named below its optimizer, with whether the fit "
          "used it), batches doubling until two doublings each save under "
          f"{limit_rules.MIN_GAIN:.0%} of the updates; S(B) = S_min(1 + B_noise/B) fitted to "
          "the measured batches with a profile-likelihood interval for B_crit = E_min/S_min "
          "(McCandlish et al. 2018; the ticks mark B_crit, where S = 2·S_min and E = 2·E_min). "
          f"{CAVEAT}\n\n{image}\n\n" + "\n".join(lines) + "\n\n" + "\n".join(text) + "\n")
