"""The report's sections on the batch during training (the critical batch
itself is measured by the steps-to-target protocol, `limit_sections`):

- The gradient noise scale B_simple = tr(Σ)/|G|², which the trainer logs every
  update of an accumulated (or `noise_scale_split`) run, over training and at
  the update where the run reached the target, compared with the measured B_crit.
- Batch-size schedules at equal examples (points of section `schedule`,
  `lbt.studies.points`): updates
  used and final accuracy of a constant batch against `steps` and `noise_scale`.

Each function draws its PNG and writes its sentences from the measured numbers
only; whether B_simple is consistent with B_crit is decided by B_crit's
interval, and a schedule's accuracy against the constant batch's by the
interval rule of `lbt.reports.compare`, not by what the papers found.

References:
  McCandlish et al. 2018, "An Empirical Model of Large-Batch Training",
    https://arxiv.org/abs/1812.06162
  Shallue et al. 2019, "Measuring the Effects of Data Parallelism on Neural
    Network Training", https://arxiv.org/abs/1811.03600
  Smith et al. 2018, "Don't Decay the Learning Rate, Increase the Batch Size",
    https://arxiv.org/abs/1711.00489
"""

from typing import Dict, List, Optional, Sequence

import numpy as np

from lbt.reports import compare, limit_report, plots
from lbt.reports.choice import CellResult
from lbt.stats import noise_scale

def _train_records(records: Dict[str, List[dict]], name: str) -> List[dict]:
  return [r for r in records[name] if r["kind"] == "train"]


def _value_at(records: Sequence[dict], update: int, key: str) -> Optional[float]:
  before = [r[key] for r in records if r["step"] <= update and isinstance(r.get(key), float)]
  return before[-1] if before else None


def section_noise_scale(records: Dict[str, List[dict]], rows: Sequence[dict],
                        limits: Dict[str, dict], report_dir: str) -> str:
  """B_simple over training for every run that measured it, and against B_crit."""
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(7, 4))
  text, curves = [], 0
  for row in rows:
    if row["status"] != "finished" or row["section"] == "schedule":
      continue
    measured = [r for r in _train_records(records, row["name"]) if "b_simple" in r]
    if not measured:
      continue
    curves += 1
    per_epoch = row["updates"] / row["epochs"] if row["epochs"] else 1
    steps = np.array([r["step"] for r in measured], float)
    b_simple = np.array([r["b_simple"] if isinstance(r["b_simple"], float) else np.nan
                         for r in measured])
    ax.plot(steps / per_epoch, b_simple, lw=0.8, label=row["name"])
    quartiles = [_value_at(measured, int(steps[-1] * f), "b_simple") for f in (0.25, 0.5, 1.0)]
    sentence = (f"- **{row['name']}** (B={row['batch_size']}): B_simple after a quarter, half "
                "and all of training: " + ", ".join(
                    f"{v:.3g}" if v is not None else "—" for v in quartiles))
    reached = row["updates_to_test_target"]
    limit = limits.get(row["optimizer"])
    if reached is not None:
      at_target = _value_at(measured, reached, "b_simple")
      ax.plot([reached / per_epoch], [at_target], "k*", ms=8)
      sentence += (f"; at update {reached}, where it reached the target, B_simple = "
                   f"{at_target:.3g}")
      if limit is not None:
        sentence += (f". Against the B_crit that §2 measured for {row['optimizer']} ("
                     f"{plots.g(limit.get('b_crit')) if limit.get('b_crit') else '∞'}"
                     + ("" if limit.get("inside_measured_range") else
                        ", outside the batches its protocol measured")
                     + f"), B_simple {limit_report.consistency(at_target, limit)}")
      else:
        sentence += f". No measured B_crit for {row['optimizer']} to compare with"
    else:
      sentence += "; it never reached the target, so no B_crit comparison at that stage"
    text.append(sentence + ".")
  if not curves:
    plots.pyplot().close(fig)
    return ("## 7. Gradient noise scale\n\nNo run of this study measured it (it needs "
            "microbatches, or `noise_scale_split`).\n")
  for label, summary in limits.items():
    if summary.get("b_crit"):
      ax.axhline(summary["b_crit"], ls="--", lw=0.8, color="gray")
      ax.annotate(f"B_crit ({label})", (0, summary["b_crit"]), fontsize=7, va="bottom")
  ax.set(xlabel="epoch", ylabel="B_simple (EMA)", yscale="log",
         title="Gradient noise scale during training (★: target reached)")
  plots.legend(ax, fontsize=7)
  image = plots.save(fig, report_dir, "noise_scale.png")
  return ("## 7. Gradient noise scale\n\nB_simple = tr(Σ)/|G|² from the microbatch and "
          "batch gradients of every update (McCandlish et al. 2018, App. A; numerator and "
          f"denominator averaged over updates with decay {noise_scale.NOISE_SCALE_DECAY:g} "
          "before dividing). Rule: B_simple is consistent with B_crit when it lies inside "
          "B_crit's interval (§2); outside it, it is not, however close the point "
          "estimates. B_crit here is the one §2 measured by steps to target; §2's protocol also "
          "measures B_simple at the best learning rate of every batch.\n\n"
          f"{image}\n\n" + "\n".join(text) + "\n")


def _schedule_line(row: dict, point: List[dict], axes) -> tuple:
  """Draws one schedule run (batch and accuracy against examples); returns
  (its updates, its batch at each update, the examples it trained on)."""
  ax_b, ax_a = axes
  train = [r for r in point if r["kind"] == "train"]
  batches = [r.get("batch_size", row["batch_size"]) for r in train]
  examples = np.cumsum(batches)
  ax_b.plot(examples, batches, lw=1, label=row["name"])
  evals = [r for r in point if r["kind"] == "eval"]
  by_step = dict(zip([r["step"] for r in train], examples))
  ax_a.plot([by_step.get(r["step"], np.nan) for r in evals],
            [100 * r["accuracy"] for r in evals], "o-", ms=2, label=row["name"])
  summary = next((r for r in reversed(point) if r["kind"] == "summary"), {})
  return summary.get("num_train_steps", len(train)), batches, summary.get(
      "examples", int(examples[-1]) if len(examples) else 0)


def section_schedules(records: Dict[str, List[dict]], cells: Sequence[CellResult],
                      report_dir: str) -> str:
  """Constant batch vs `steps` vs `noise_scale` at equal examples."""
  runs = [c for c in cells if c.row["section"] == "schedule"]
  if not runs:
    return ("## 8. Batch-size schedules\n\nNo schedule points (section `schedule`) in "
            "this study.\n")
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  table = ["| cell | schedule | batches | updates | examples | test accuracy (%) |",
           "|---|---|---|---|---|---|"]
  updates = {}
  for cell in runs:
    row = cell.row
    updates[cell.name], batches, examples = _schedule_line(row, records[row["name"]], axes)
    table.append(f"| {cell.name} | {row['batch_schedule']} | "
                 f"{min(batches, default=0)}–{max(batches, default=0)} | "
                 f"{updates[cell.name]} | {examples} | {cell.outcome()}{cell.mark()} |")
  axes[0].set(xlabel="examples trained", ylabel="batch size", yscale="log",
              title="Batch size during training (seed 0)")
  axes[1].set(xlabel="examples trained", ylabel="test accuracy (%)", title="Test accuracy")
  plots.legend(axes[1], fontsize=7)
  image = plots.save(fig, report_dir, "batch_schedules.png")
  text = []
  constant = next((c for c in runs if c.row["batch_schedule"] == "constant"), None)
  if constant is not None and constant.estimate is not None:
    for cell in runs:
      if cell is constant or cell.estimate is None:
        continue
      ratio = updates[cell.name] / updates[constant.name]
      text.append(f"- **{cell.name}**: {updates[cell.name]} updates ({ratio:.2f}× the "
                  f"constant batch's {updates[constant.name]}), test accuracy against it "
                  f"{compare.difference_text(cell.estimate, constant.estimate)}.")
  return ("## 8. Batch-size schedules at equal examples\n\nThe same epochs and the same "
          "learning-rate schedule (in epochs, with the peak LR of the starting batch); only "
          "the batch changes: `steps` grows it at fixed epochs (Smith et al. 2018), "
          "`noise_scale` sets it to k·B_simple as measured during the run. Fewer updates at "
          "equal accuracy is what a larger batch buys.\n\n" + "\n".join(table) +
          f"\n\n{image}\n\n" + "\n".join(text) + "\n")
