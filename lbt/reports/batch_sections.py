"""Where the batch stops paying off: the report's three measurements of it.

- Steps to target across the sweep: S(B) = S_min·(1 + B_noise/B) fitted to the
  updates each batch needed to reach the target accuracy, E_min = S_min·B_noise
  and the critical batch B_crit = E_min/S_min, with Shallue et al.'s three
  regimes marked on the fitted curve.
- The gradient noise scale B_simple = tr(Σ)/|G|², which the trainer logs every
  update of an accumulated (or `noise_scale_split`) run, over training and at
  the update where the run reached the target, compared with B_crit.
- Batch-size schedules at equal examples (points `-batch-<schedule>`): updates
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

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from lbt.reports import plots
from lbt.stats import noise_scale
from lbt.stats import steps_to_target
from lbt.stats.steps_to_target import REGIME_FACTOR

SCHEDULE_PREFIX = "batch-"

Fit = Tuple[float, float]  # (S_min, B_noise)


def _shade_regimes(ax, b_crit: float, low: float, high: float) -> None:
  edges = [b_crit / REGIME_FACTOR, b_crit * REGIME_FACTOR]
  spans = [(low, edges[0], "perfect scaling"), (edges[0], edges[1], "diminishing returns"),
           (edges[1], high, "maximal parallelism")]
  for (a, b, label), shade in zip(spans, ("#e8f4e8", "#fdf3e1", "#f6e3e3")):
    if b > a:
      ax.axvspan(max(a, low), min(b, high), color=shade, zorder=0, label=label)


def section_target(series: Dict[str, List[dict]], report_dir: str
                   ) -> Tuple[str, Dict[str, Fit]]:
  """Updates and examples to the target across the sweep, and the fits.

  Args:
    series: optimizer label -> the sweep's chosen rows (`report.sweep`).
    report_dir: where the PNG goes.

  Returns:
    (markdown section, label -> (S_min, B_noise) for the series that fit).
  """
  plt = plots.pyplot()
  fig, (ax_s, ax_e) = plt.subplots(1, 2, figsize=(11, 4))
  text, target, fits = [], None, {}
  for label, rows in series.items():
    reached = [r for r in rows if r["updates_to_target"] is not None]
    target = target or next((r["target_accuracy"] for r in rows), None)
    missed = [r["batch_size"] for r in rows if r["updates_to_target"] is None]
    if not reached:
      text.append(f"- **{label}**: no batch reached the target.")
      continue
    b = np.array([r["batch_size"] for r in reached], float)
    s = np.array([r["updates_to_target"] for r in reached], float)
    line, = ax_s.loglog(b, s, "o-", label=label)
    ax_e.loglog(b, s * b, "o-", color=line.get_color(), label=label)
    perfect = s[0] * b[0] / b
    ax_s.loglog(b, perfect, ":", color=line.get_color())
    ax_e.loglog(b, perfect * b, ":", color=line.get_color())
    ratio = ", ".join(f"B={int(x)}: {y:.2g}×" for x, y in zip(b, s / perfect))
    sentence = (f"- **{label}**: updates to target / perfect scaling from B={int(b[0])}: "
                f"{ratio}" + (f"; never reached at B={', '.join(map(str, missed))}"
                              if missed else ""))
    if np.unique(b).size >= 3:
      fit = steps_to_target.fit_limit(b, s)
      s_min, b_noise = fit.s_min, fit.b_crit
    if np.unique(b).size >= 3 and not 0 < b_noise < math.inf:
      sentence += (f". The fit S(B) = S_min(1 + B_noise/B) gives no positive S_min and "
                   f"B_noise (S_min = {s_min:.3g}, B_noise = {b_noise:.3g}): these batches "
                   "scale perfectly or too noisily to place a critical batch; it lies beyond "
                   f"B={int(b.max())} or cannot be told")
    elif np.unique(b).size >= 3:
      fits[label] = (s_min, b_noise)
      grid = np.geomspace(b.min(), max(b.max(), 4 * b_noise), 60)
      ax_s.loglog(grid, s_min * (1 + b_noise / grid), "--", color=line.get_color())
      ax_e.loglog(grid, s_min * (grid + b_noise), "--", color=line.get_color())
      # Every fit's regime bounds and B_crit, as ticks on its own curve.
      ticks = np.array([b_noise / REGIME_FACTOR, b_noise, b_noise * REGIME_FACTOR])
      ticks = ticks[(ticks >= grid[0]) & (ticks <= grid[-1])]
      ax_s.loglog(ticks, s_min * (1 + b_noise / ticks), "|", ms=12, color=line.get_color())
      ax_e.loglog(ticks, s_min * (ticks + b_noise), "|", ms=12, color=line.get_color())
      sentence += (f". Fit S(B) = S_min(1 + B_noise/B): S_min = {s_min:.3g}, E_min = "
                   f"{s_min * b_noise:.3g} examples, critical batch B_crit = E_min/S_min = "
                   f"{b_noise:.3g}" + _extrapolation(b_noise, b))
    text.append(sentence + ".")
  shaded = next(iter(fits), None)  # The first optimizer's regimes (the baseline's).
  if shaded is not None and fits[shaded][1] > 0:
    for ax in (ax_s, ax_e):
      low, high = ax.get_xlim()
      _shade_regimes(ax, fits[shaded][1], low, high)
      ax.set_xlim(low, high)
  for ax, what in ((ax_s, "updates"), (ax_e, "examples")):
    ax.set(xlabel="batch size", ylabel=f"{what} to target",
           title=f"{what.capitalize()} to {plots.pct(target)}% test accuracy")
    plots.legend(ax, fontsize=7)
  image = plots.save(fig, report_dir, "updates_to_target.png")
  return ("## 2. Updates and examples to the target accuracy\n\nTarget: "
          f"{plots.pct(target)}% test accuracy (first evaluation reaching it). Perfect "
          "scaling (dotted) halves the updates when the batch doubles; a ratio above 1× is "
          "where returns diminish. Regimes of the fitted curve (dashed; Shallue et al. "
          f"2019's, bounds ours): perfect scaling below B_crit/{REGIME_FACTOR:g} (updates "
          f"within 10 % of E_min/B), maximal parallelism above {REGIME_FACTOR:g}·B_crit (within 10 % of "
          f"S_min), diminishing returns between; shaded for "
          f"{shaded or 'the first optimizer that fits'}, ticks on every fitted curve at "
          f"B_crit/{REGIME_FACTOR:g}, B_crit and {REGIME_FACTOR:g}·B_crit.\n\n{image}"
          "\n\n" + "\n".join(text) + "\n\n" + MEASURED_ELSEWHERE + "\n"), fits


# What the sweep's fit is not, and where the measurement is.
MEASURED_ELSEWHERE = (
    "These points train for equal epochs at one learning rate each (the scaling "
    "rule's, untuned): a batch that misses the target in its epochs is not shown to "
    "be unable to reach it, and the fit above uses only the batches that reached it, "
    "so a B_crit beyond them is an extrapolation, not a measurement. The measured "
    "critical batch, each batch trained to the target on a validation split with its "
    "learning rate searched until bracketed, is `python -m lbt.limit` (for this "
    "study's MLP: `--study=configs/studies/fashion_mnist_critical.py`).")


def _extrapolation(b_crit: float, measured: np.ndarray) -> str:
  if b_crit > measured.max():
    return (f" (beyond the largest batch that reached the target, {int(measured.max())}: "
            "an extrapolation)")
  if b_crit < measured.min():
    return f" (below the smallest batch measured, {int(measured.min())}: an extrapolation)"
  return ""


def _train_records(records: Dict[str, List[dict]], name: str) -> List[dict]:
  return [r for r in records[name] if r["kind"] == "train"]


def _value_at(records: Sequence[dict], update: int, key: str) -> Optional[float]:
  before = [r[key] for r in records if r["step"] <= update and isinstance(r.get(key), float)]
  return before[-1] if before else None


def section_noise_scale(records: Dict[str, List[dict]], rows: Sequence[dict],
                        fits: Dict[str, Fit],
                        report_dir: str) -> str:
  """B_simple over training for every run that measured it, and against B_crit."""
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(7, 4))
  text, curves = [], 0
  for row in rows:
    if row["status"] != "finished" or row["variant"].startswith(SCHEDULE_PREFIX):
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
    fit = fits.get(row["optimizer"])
    if reached is not None:
      at_target = _value_at(measured, reached, "b_simple")
      ax.plot([reached / per_epoch], [at_target], "k*", ms=8)
      sentence += (f"; at update {reached}, where it reached the target, B_simple = "
                   f"{at_target:.3g}")
      if fit is not None:
        sentence += (f". The {row['optimizer']} sweep's fitted B_crit is {fit[1]:.3g}: they "
                     f"{noise_scale.agreement(at_target, fit[1])}")
        largest = max(r["batch_size"] for r in rows if r["optimizer"] == row["optimizer"]
                      and r["variant"] == "" and r["updates_to_target"] is not None)
        if fit[1] > largest:
          sentence += (f"; that B_crit lies beyond the largest batch that reached the "
                       f"target ({largest}), so it is an extrapolation")
      else:
        sentence += f". No fitted B_crit for {row['optimizer']} to compare with"
    else:
      sentence += "; it never reached the target, so no B_crit comparison at that stage"
    text.append(sentence + ".")
  if not curves:
    plots.pyplot().close(fig)
    return ("## 7. Gradient noise scale\n\nNo run of this study measured it (it needs "
            "microbatches, or `noise_scale_split`).\n")
  for label, (_, b_noise) in fits.items():
    ax.axhline(b_noise, ls="--", lw=0.8, color="gray")
    ax.annotate(f"B_crit ({label})", (0, b_noise), fontsize=7, va="bottom")
  ax.set(xlabel="epoch", ylabel="B_simple (EMA)", yscale="log",
         title="Gradient noise scale during training (★: target reached)")
  plots.legend(ax, fontsize=7)
  image = plots.save(fig, report_dir, "noise_scale.png")
  return ("## 7. Gradient noise scale\n\nB_simple = tr(Σ)/|G|² from the microbatch and "
          "batch gradients of every update (McCandlish et al. 2018, App. A; numerator and "
          f"denominator averaged over updates with decay {noise_scale.NOISE_SCALE_DECAY:g} "
          "before dividing). Rule: B_simple and B_crit agree within a factor of "
          f"{noise_scale.AGREEMENT_FACTOR:g}; within 10× they agree in order of magnitude only. "
          "A comparison with a B_crit of §2 that is an extrapolation is no test of "
          "McCandlish et al.'s B_crit ≈ B_simple; `lbt.limit` compares B_simple with a "
          "measured B_crit at the best learning rate of every batch.\n\n"
          f"{image}\n\n" + "\n".join(text) + "\n")


def section_schedules(records: Dict[str, List[dict]], rows: Sequence[dict],
                      report_dir: str) -> str:
  """Constant batch vs `steps` vs `noise_scale` at equal examples."""
  runs = [r for r in rows if r["variant"].startswith(SCHEDULE_PREFIX)]
  if not runs:
    return ("## 8. Batch-size schedules\n\nNo schedule points (`-batch-<schedule>`) in "
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
    table.append(f"| {row['name']} | {row['variant'][len(SCHEDULE_PREFIX):]} | "
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
  constant = next((f for f in finished if f[0]["variant"] == SCHEDULE_PREFIX + "constant"),
                  None)
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
