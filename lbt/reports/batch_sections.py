"""The report's sections on the batch during training (the critical batch
itself is measured by the steps-to-target protocol, `limit_sections`):

- The gradient noise scale B_simple = tr(Σ)/|G|², which the trainer logs every
  update of an accumulated (or `noise_scale_split`) run, over training and at
  the update where the run reached the target, compared with the measured B_crit.
- Batch-size schedules at equal examples (points of section `schedule`,
  `lbt.studies.points`): updates
  used and final accuracy of a constant batch against `steps` and `noise_scale`.

Each function draws its PNG and writes its sentences from the measured numbers
only; whether B_simple and B_crit agree is decided by the rule stated in the
text, not by what the papers found.

References:
  McCandlish et al. 2018, "An Empirical Model of Large-Batch Training",
    https://arxiv.org/abs/1812.06162
  Shallue et al. 2019, "Measuring the Effects of Data Parallelism on Neural
    Network Training", https://arxiv.org/abs/1811.03600
  Smith et al. 2018, "Don't Decay the Learning Rate, Increase the Batch Size",
    https://arxiv.org/abs/1711.00489
"""

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from lbt.reports import plots
from lbt.stats import noise_scale

# optimizer -> (its measured B_crit, whether it lies inside the batches measured).
Limit = Tuple[float, bool]


def _train_records(records: Dict[str, List[dict]], name: str) -> List[dict]:
  return [r for r in records[name] if r["kind"] == "train"]


def _value_at(records: Sequence[dict], update: int, key: str) -> Optional[float]:
  before = [r[key] for r in records if r["step"] <= update and isinstance(r.get(key), float)]
  return before[-1] if before else None


def section_noise_scale(records: Dict[str, List[dict]], rows: Sequence[dict],
                        limits: Dict[str, Limit],
                        report_dir: str) -> str:
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
    reached = row["updates_to_target"]
    limit = limits.get(row["optimizer"])
    if reached is not None:
      at_target = _value_at(measured, reached, "b_simple")
      ax.plot([reached / per_epoch], [at_target], "k*", ms=8)
      sentence += (f"; at update {reached}, where it reached the target, B_simple = "
                   f"{at_target:.3g}")
      if limit is not None:
        sentence += (f". The measured B_crit of {row['optimizer']} is {limit[0]:.3g} (§2"
                     + ("" if limit[1] else ", outside the batches its protocol measured")
                     + f"): they {noise_scale.agreement(at_target, limit[0])}")
      else:
        sentence += f". No measured B_crit for {row['optimizer']} to compare with"
    else:
      sentence += "; it never reached the target, so no B_crit comparison at that stage"
    text.append(sentence + ".")
  if not curves:
    plots.pyplot().close(fig)
    return ("## 7. Gradient noise scale\n\nNo run of this study measured it (it needs "
            "microbatches, or `noise_scale_split`).\n")
  for label, (b_crit, _) in limits.items():
    ax.axhline(b_crit, ls="--", lw=0.8, color="gray")
    ax.annotate(f"B_crit ({label})", (0, b_crit), fontsize=7, va="bottom")
  ax.set(xlabel="epoch", ylabel="B_simple (EMA)", yscale="log",
         title="Gradient noise scale during training (★: target reached)")
  plots.legend(ax, fontsize=7)
  image = plots.save(fig, report_dir, "noise_scale.png")
  return ("## 7. Gradient noise scale\n\nB_simple = tr(Σ)/|G|² from the microbatch and "
          "batch gradients of every update (McCandlish et al. 2018, App. A; numerator and "
          f"denominator averaged over updates with decay {noise_scale.NOISE_SCALE_DECAY:g} "
          "before dividing). Rule: B_simple and B_crit agree within a factor of "
          f"{noise_scale.AGREEMENT_FACTOR:g}; within 10× they agree in order of magnitude only. "
          "B_crit here is the one §2 measured by steps to target; §2's protocol also "
          "measures B_simple at the best learning rate of every batch.\n\n"
          f"{image}\n\n" + "\n".join(text) + "\n")


def section_schedules(records: Dict[str, List[dict]], rows: Sequence[dict],
                      report_dir: str) -> str:
  """Constant batch vs `steps` vs `noise_scale` at equal examples."""
  runs = [r for r in rows if r["section"] == "schedule"]
  if not runs:
    return ("## 8. Batch-size schedules\n\nNo schedule points (section `schedule`) in "
            "this study.\n")
  plt = plots.pyplot()
  fig, (ax_b, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
  table = ["| point | schedule | batches | updates | examples | final accuracy (%) |",
           "|---|---|---|---|---|---|"]
  finished = []
  for row in runs:
    point = records[row["name"]]
    train = [r for r in point if r["kind"] == "train"]
    summary = next((r for r in reversed(point) if r["kind"] == "summary"), {})
    batches = [r.get("batch_size", row["batch_size"]) for r in train]
    examples = np.cumsum(batches)
    ax_b.plot(examples, batches, lw=1, label=row["name"])
    evals = [r for r in point if r["kind"] == "eval"]
    by_step = dict(zip([r["step"] for r in train], examples))
    ax_a.plot([by_step.get(r["step"], np.nan) for r in evals],
              [100 * r["accuracy"] for r in evals], "o-", ms=2, label=row["name"])
    updates = summary.get("num_train_steps", len(train))
    outcome = plots.pct(row["final_accuracy"]) if row["status"] == "finished" else row["status"]
    table.append(f"| {row['name']} | {row['batch_schedule']} | "
                 f"{min(batches, default=0)}–{max(batches, default=0)} | {updates} | "
                 f"{summary.get('examples', int(examples[-1]) if len(examples) else 0)} | "
                 f"{outcome} |")
    if row["status"] == "finished":
      finished.append((row, updates))
  ax_b.set(xlabel="examples trained", ylabel="batch size", yscale="log",
           title="Batch size during training")
  ax_a.set(xlabel="examples trained", ylabel="test accuracy (%)", title="Test accuracy")
  plots.legend(ax_a, fontsize=7)
  image = plots.save(fig, report_dir, "batch_schedules.png")
  text = []
  constant = next((f for f in finished if f[0]["batch_schedule"] == "constant"), None)
  if constant and len(finished) > 1:
    base, base_updates = constant
    for row, updates in finished:
      if row is base:
        continue
      delta = 100 * (row["final_accuracy"] - base["final_accuracy"])
      text.append(f"- **{row['name']}**: {updates} updates ({updates / base_updates:.2f}× "
                  f"the constant batch's {base_updates}), {delta:+.2f} points of test "
                  "accuracy against it.")
  return ("## 8. Batch-size schedules at equal examples\n\nThe same epochs and the same "
          "learning-rate schedule (in epochs, with the peak LR of the starting batch); only "
          "the batch changes: `steps` grows it at fixed epochs (Smith et al. 2018), "
          "`noise_scale` sets it to k·B_simple as measured during the run. Fewer updates at "
          "equal accuracy is what a larger batch buys.\n\n" + "\n".join(table) +
          f"\n\n{image}\n\n" + "\n".join(text) + "\n")
