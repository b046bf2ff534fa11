"""What lbt.limit writes for a person: report/limit.md with its two figures,
the console summary, and critical.md comparing several optimizers' limits.

Every sentence is written from the numbers in limit.json (lbt.limit.summarize).
"""

import json
import os
from typing import Dict, Sequence

import numpy as np

from lbt.io import layout
from lbt.io import faults, files
from lbt.reports import plots
from lbt.reports.plots import g
from lbt.stats import steps_to_target
from lbt.studies import limit_rules


def write_report(summary: dict, workdir: str) -> str:
  """report/limit.md with Shallue's and McCandlish's figures; returns its path."""
  report_dir = os.path.join(workdir, layout.REPORT)
  files.makedirs(report_dir)
  rows = [r for r in summary["batches"] if r["reached"]]
  images = _plots(summary, rows, report_dir) if rows else ""
  lines = ["| batch | best LR | updates to target (± evaluation interval) | "
           "examples to target | trials | best LR bracketed | used in the fit | B_simple | "
           "learning rates tried (updates, or outcome) |", "|---|---|---|---|---|---|---|---|---|"]
  for r in summary["batches"]:
    tried = ", ".join(f"{lr}: {v}" for lr, v in r["learning_rates"].items())
    lines.append(f"| {r['batch']} | {g(r['best_learning_rate'])} | "
                 f"{r['updates_to_target'] or 'not reached'}"
                 f"{_interval(r)} | "
                 f"{r['examples_to_target'] or '—'} | {r['trials']} | {_bracketed(r)} | "
                 f"{_in_fit(r)} | {g(r['b_simple'])} | {tried} |")
  text = (f"# Where is the limit? `{summary['config']}`\n\n{headline(summary)}\n\n"
          "Steps to a validation accuracy of "
          f"{summary['target']:g} (Shallue et al. 2019), the learning rate tuned per batch "
          "by the study's one search rule, until a trial scores worse than the tied best by "
          "more than the tolerance, or diverges, on each side (the bracketed column says "
          "where the search ended without that, and why; the next column whether the fit "
          "of S(B) used the batch); trials that had not reached the target by their "
          "batch's best count are 'not_reached'.\n\n" + "\n".join(lines)
          + f"\n\n{images}\n")
  path = os.path.join(report_dir, layout.LIMIT_MD)
  faults.moment("report")
  files.write_text_atomic(path, text)
  return path


def reason(row: dict) -> str:
  """Why a batch's search ended where it did (limit.json's "reason"; older
  files: "bracket_reason")."""
  return row.get("reason") or row.get("bracket_reason") or "no reason recorded"


def _bracketed(row: dict) -> str:
  if "bracketed" not in row:
    return "—"
  return "yes" if row["bracketed"] else f"no: {reason(row)}"


def _in_fit(row: dict) -> str:
  """Whether the fit of S(B) used the batch (older files do not say)."""
  used = row.get("used_in_fit")
  return "—" if used is None else ("yes" if used else "no")


def consistency(b_simple: float, summary: dict) -> str:
  """B_simple against B_crit's interval: consistent when it lies inside."""
  low, high = summary.get("b_crit_low"), summary.get("b_crit_high")
  inside = steps_to_target.inside_interval(b_simple, low, high, summary.get("bounded"))
  if inside is None:
    return "cannot be tested against B_crit (its interval has no bound)"
  if inside:
    return f"is consistent with B_crit (inside its interval {bounds(summary)})"
  side = "below" if low is not None and b_simple < low else "above"
  return f"is not consistent with B_crit ({side} its interval {bounds(summary)})"


def bounds(summary: dict) -> str:
  """The interval in words: both ends, one (the other open), or none."""
  low, high = g(summary["b_crit_low"]), g(summary["b_crit_high"])
  return {steps_to_target.TWO_SIDED: f"{low}–{high}",
          steps_to_target.LOWER_ONLY: f"at least {low}, no upper bound",
          steps_to_target.UPPER_ONLY: f"at most {high}, no lower bound",
          steps_to_target.UNBOUNDED: "no bound on either side"}.get(
              summary.get("bounded"), f"{low}–{high}")


def _interval(row: dict) -> str:
  return f" (±{row['evaluated_every']})" if row.get("evaluated_every") else ""


def headline(summary: dict) -> str:
  """The answer in a few sentences, from the measured numbers only."""
  if summary["b_crit"] is None and summary["s_min"] is None:
    return f"No critical batch: {summary['fit']}."
  where = ("inside" if summary["inside_measured_range"] else "outside") + (
      " the measured range {}–{}".format(*summary["measured_range"]))
  b_crit = "∞" if summary["b_crit"] is None else g(summary["b_crit"])
  note = f" {summary['interval_note']}" if summary.get("interval_note") else ""
  text = (f"B_crit = {b_crit} ({summary['level']:.0%} interval: {bounds(summary)}; "
          f"{summary['method']}), {where}.{note} Fitted S_min = {g(summary['s_min'])} "
          f"updates, E_min = {g(summary['e_min'])} examples.")
  stops = summary["doubling_stops_at"]
  text += (f" Doubling the batch stops paying (two doublings each < "
           f"{limit_rules.MIN_GAIN:.0%} fewer updates) from B = {stops}." if stops else
           " Doubling still paid at the largest batch measured.")
  if summary.get("b_simple_median") is not None:
    text += (f" B_simple at the target, median over the batches: "
             f"{g(summary['b_simple_median'])}, which "
             f"{consistency(summary['b_simple_median'], summary)}.")
  return text


def _plots(summary: dict, rows: Sequence[dict], report_dir: str) -> str:
  plt = plots.pyplot()
  batch = np.array([r["batch"] for r in rows], float)
  steps = np.array([r["updates_to_target"] for r in rows], float)
  fig, (ax_s, ax_e) = plt.subplots(1, 2, figsize=(11, 4))
  ax_s.plot(batch, steps, "o", label="measured (best LR)")
  ax_e.plot(batch, batch * steps, "o", label="measured (best LR)")
  curve = None
  if summary["s_min"] is not None and summary["s_min"] > 0 and summary["e_min"] > 0:
    b = np.geomspace(batch.min() / 2, batch.max() * 2, 100)
    curve = summary["s_min"] + summary["e_min"] / b
    ax_s.plot(b, curve, "-", label="S_min(1 + B_noise/B)")
    ax_e.plot(b, b * curve, "-", label="E_min(1 + B/B_noise)")
    if summary["b_crit"]:
      for ax in (ax_s, ax_e):
        ax.axvline(summary["b_crit"], color="k", ls="--", lw=0.8, label="B_crit")
  for ax, label in ((ax_s, "updates to target"), (ax_e, "examples to target")):
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel=label)
    plots.legend(ax, fontsize=7)
  shallue = plots.save(fig, report_dir, "limit_steps_examples.png")
  fig, ax = plt.subplots(figsize=(5.5, 4))
  ax.plot(steps, batch * steps, "o-", label="measured")
  if curve is not None:
    ax.plot(curve, b * curve, "-", label="(S/S_min − 1)(E/E_min − 1) = 1")
  ax.set(xscale="log", yscale="log", xlabel="updates to target S",
         ylabel="examples to target E", title="The S–E trade-off (McCandlish et al.)")
  plots.legend(ax, fontsize=7)
  return shallue + "\n\n" + plots.save(fig, report_dir, "limit_tradeoff.png")


def write_comparison(summaries: Dict[str, dict], workdir: str) -> str:
  """DIR/critical.md and critical.json: each optimizer's answer side by side."""
  lines = ["| optimizer | B_crit | interval | inside measured | S_min | E_min | "
           "doubling stops at | B_simple (median) |", "|---|---|---|---|---|---|---|---|"]
  for label, s in summaries.items():
    interval = bounds(s) if s["s_min"] is not None else "—"
    lines.append(f"| {label} | {g(s['b_crit'])} | {interval} | "
                 f"{s.get('inside_measured_range', '—')} | "
                 f"{g(s['s_min'])} | {g(s['e_min'])} | {s['doubling_stops_at'] or '—'} | "
                 f"{g(s.get('b_simple_median'))} |")
  text = ("# The critical batch, measured per optimizer\n\n" + "\n".join(lines) + "\n\n"
          + "\n".join(f"- **{label}**: {headline(s)} (`{label}/report/limit.md`)"
                      for label, s in summaries.items()) + "\n")
  files.write_text_atomic(os.path.join(workdir, layout.CRITICAL),
                          json.dumps(summaries, indent=2, sort_keys=True))
  path = os.path.join(workdir, layout.CRITICAL_MD)
  files.write_text_atomic(path, text)
  return path


def print_summary(summary: dict, workdir: str) -> None:
  path = os.path.join(workdir, layout.LIMIT)
  print(f"lbt.limit: {headline(summary)}\nlbt.limit: {path}")
  for r in summary["batches"]:
    print(f"  B={r['batch']:>6}  best LR {g(r['best_learning_rate']):>8}  "
          f"updates {r['updates_to_target'] or 'not reached':>12}  trials {r['trials']}"
          + ("" if r.get("bracketed", True) else f"  not bracketed: {reason(r)}"),
          flush=True)
