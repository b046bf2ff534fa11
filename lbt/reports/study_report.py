"""A study's report: DIR/report/report.md and its PNG plots, from the point workdirs.

  python -m lbt.report DIR        # rebuild DIR/results.sqlite and DIR/report/

`build_report` first rebuilds results.sqlite from the workdirs
(`lbt.studies.results.rebuild_database`), then writes eight sections, one function each
(those on the critical batch size in `lbt.reports.batch_sections`); each draws its PNG
with matplotlib (Agg, no display, `lbt.reports.plots`) and writes its sentences
from the measured numbers only, so a result that contradicts the paper is
stated as such. The report never trains.

Each row carries its point's role (`lbt.studies.points`), and the sections
find their points by it, never by name: the batch sweep is section `sweep`
(a cell whose trials carry a learning rate is tuned), the recipe ladder
`ladder` by rung, Hoffer et al.'s test `hoffer` by variant at one large batch,
the batch schedules `schedule`. Rows of one cell are the trials of its
learning rate; the report keeps one (`choose_learning_rates`).

References:
  You et al. 2020, "The Limit of the Batch Size", https://arxiv.org/abs/2006.08517
  Hoffer, Hubara & Soudry 2017, https://arxiv.org/abs/1705.08741"""

import json
import math
import os
from typing import Dict, Sequence

import numpy as np

from lbt.io import layout
from lbt.engine import config as config_lib
from lbt.io import faults, files
from lbt.reports import batch_sections, choice, full_batch, limit_sections, plots, tuned_sections
from lbt.stats import diffusion
from lbt.studies import results
from lbt.studies.points import HOFFER_VARIANTS


MIN_FIT_UPDATES = 8  # Fewer updates than this make a two-parameter fit meaningless.


# Bookkeeping fields, not ingredients of a recipe step.
BOOKKEEPING = ("dataset.", "eval_every_steps", "log_every_steps", "checkpoint_")


HOFFER_LABELS = {"": "equal epochs (linear LR)", "sqrt": "+ sqrt LR scaling",
                 "sqrt-gbn": "+ ghost BN", "regime": "+ regime adaptation"}


def _curves(records: Dict[str, list], name: str) -> Dict[str, list]:
  return {kind: [r for r in records[name] if r["kind"] == kind] for kind in ("train", "eval")}


def section_accuracy(chosen, report_dir: str, spread: float = 0.0) -> str:
  """§1; `spread`: the widest seed-to-seed range measured (§10), below
  which a difference is a tie."""
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(7, 4))
  text = []
  for label, rows in choice.sweep(chosen).items():
    done = [r for r in rows if r["status"] == "finished"]
    ax.plot([r["batch_size"] for r in done], [100 * r["final_accuracy"] for r in done],
            "o-", label=label)
    if not done:
      continue
    best = max(done, key=lambda r: r["final_accuracy"])
    near = [r["batch_size"] for r in done if r["final_accuracy"] >= best["final_accuracy"] - 0.01]
    largest = max(rows, key=lambda r: r["batch_size"])
    text.append(f"- **{label}**: best {plots.pct(best['final_accuracy'])}% at "
                f"B={best['batch_size']}; "
                f"within 1 point of it up to B={max(near)}; at the largest batch "
                f"B={largest['batch_size']}: {choice.outcome(largest)}"
                + (f" ({100 * (largest['final_accuracy'] - best['final_accuracy']):+.2f} points)"
                   if largest["status"] == "finished" else "") + ".")
  largest = max((r["batch_size"] for rows in choice.sweep(chosen).values() for r in rows), default=None)
  at_largest = sorted(((r["final_accuracy"], label) for label, rows in choice.sweep(chosen).items()
                       for r in rows if r["batch_size"] == largest and r["status"] == "finished"),
                      reverse=True)
  if at_largest:
    text.append(f"- At B={largest}, from best to worst: " + ", ".join(
        f"{label} {plots.pct(accuracy)}%" for accuracy, label in at_largest) + (
            f"; differences below {100 * spread:.2f} points, the widest seed-to-seed "
            "range measured (§10), are ties" if spread else "") + ".")
  ax.set_xscale("log", base=2)
  ax.set(xlabel="batch size", ylabel="test accuracy (%)", title="Test accuracy vs batch size")
  plots.legend(ax)
  image = plots.save(fig, report_dir, "accuracy_vs_batch.png")
  tuned = [(g, e) for g, e in chosen.items() if e["criterion"]]
  tuned_text = "\n".join(
      f"- `{g}`: base LR {e['row']['base_learning_rate']:g} chosen by {e['criterion']} among "
      + ", ".join(f"{m['base_learning_rate']:g} ({plots.pct(m['validation_accuracy'])}% val)"
                  for m in e["members"]) + choice.grid_edge(e) for g, e in tuned) or "- none"
  return ("## 1. Test accuracy vs batch size\n\nEach point trains for the same number of "
          "epochs, so a larger batch takes fewer updates. Final test accuracy (%):\n\n"
          f"{choice.accuracy_table(chosen)}\n\n{image}\n\n" + "\n".join(text) +
          "\n\nPoints whose learning rate was tuned (on the validation split held out "
          f"from the training set, never on the test set); all others use the scaling rule "
          f"of their config from the reference batch, untuned:\n\n{tuned_text}\n")


def section_curves(records, chosen, report_dir: str) -> str:
  plt = plots.pyplot()
  groups = dict(choice.sweep(chosen))
  # Schedule points are drawn against examples, in batch_sections' section.
  others = [e["row"] for e in chosen.values()
            if e["row"]["section"] not in ("sweep", "schedule")]
  if others:
    groups["recipe ladder, Hoffer's test and other variants"] = others
  images = []
  for index, (label, rows) in enumerate(groups.items()):
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
      curves = _curves(records, row["name"])
      per_epoch = row["updates"] / row["epochs"] if row["epochs"] else 1
      train = [r for r in curves["train"] if isinstance(r["loss"], float)]
      ax_l.plot([r["step"] / per_epoch for r in train], [r["loss"] for r in train],
                lw=0.8, label=row["name"])
      ax_a.plot([r["step"] / per_epoch for r in curves["eval"]],
                [100 * r["accuracy"] for r in curves["eval"]], "o-", ms=2, label=row["name"])
    ax_l.set(xlabel="epoch", ylabel="training loss", yscale="log", title=label)
    ax_a.set(xlabel="epoch", ylabel="test accuracy (%)", title=label)
    plots.legend(ax_a, fontsize=6)
    images.append(plots.save(fig, report_dir, f"curves_{index}.png"))
  return ("## 3. Training loss and test accuracy per point\n\n" +
          ("\n\n".join(images) or "(no points yet)") + "\n")


def _changes(before: dict, after: dict, skip: Sequence[str] = ()) -> str:
  old, new = json.loads(before["config_json"]), json.loads(after["config_json"])
  fields = [f for f in config_lib.changed_fields(old, new)
            if not f.startswith(BOOKKEEPING + tuple(skip))]

  def value(tree, field):
    for part in field.split("."):
      tree = tree.get(part, "—") if isinstance(tree, dict) else "—"
    return tree
  return "; ".join(f"{f}: {value(old, f)} → {value(new, f)}" for f in fields) or "none"


def section_ladder(chosen, report_dir: str) -> str:
  entries = sorted((e for e in chosen.values() if e["row"]["section"] == "ladder"
                    and not e["row"].get("rule")), key=lambda e: e["row"]["rung"])
  rules = {e["row"]["rung"]: e["row"] for e in chosen.values()
           if e["row"]["section"] == "ladder" and e["row"].get("rule")}
  if not entries:
    return "## 4. The recipe ladder\n\nThis study has no recipe-ladder points.\n"
  lines = ["| step | point | what changed | epochs | updates | test accuracy (%) | "
           "gain (points) | base LR | at the rule's LR (%) |", "|---|---|---|---|---|---|---|---|---|"]
  previous, previous_accuracy, accuracies = None, None, []
  for entry in entries:
    row, k = entry["row"], entry["row"]["rung"]
    accuracy = row["final_accuracy"] if row["status"] == "finished" else None
    gain = (f"{100 * (accuracy - (previous_accuracy or 0)):+.2f}"
            if previous is not None and accuracy is not None else "")
    change = "baseline" if previous is None else (
        f"{row['change']}: {_changes(previous, row, ('optimizer.learning_rate',))}"
        if "tuned" in entry
        else _changes(previous, row))
    rule = rules.get(k)
    rule_text = f"{choice.outcome(rule)} ({rule['rule']})" if rule else ""
    label = row["cell"] if "tuned" in entry else row["name"]
    lines.append(f"| {k} | `{label}` | {change} | {row['epochs']:g} | "
                 f"{row['updates'] or ''} | {choice.outcome(row)}{choice.trials_mark(entry)} | {gain} | "
                 f"{row['base_learning_rate']:.4g} | {rule_text} |")
    previous, previous_accuracy = row, accuracy
    accuracies.append(0.0 if accuracy is None else 100 * accuracy)
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(8, 3.5))
  ax.bar([str(e["row"]["rung"]) for e in entries], accuracies)
  batch = entries[0]["row"]["batch_size"]
  ax.set(xlabel="recipe step", ylabel="test accuracy (%)",
         title=f"Recipe ladder at B={batch} (0 = diverged)")
  image = plots.save(fig, report_dir, "recipe_ladder.png")
  first, last = accuracies[0], accuracies[-1]
  tuned = any("tuned" in e for e in entries)
  how = ("Each rung's learning rate is searched on the validation split from the previous "
         "rung's best, so a rung measures its ingredient at its own best learning rate; "
         "the rungs whose ingredient is a learning-rate rule also ran once at the rule's "
         "own learning rate (last column): how far the rule is from the optimum. "
         if tuned else "")
  return ("## 4. The recipe ladder\n\nFrom the Goyal et al. baseline, each step adds one "
          f"ingredient (the config fields it changes are listed, the learning rate aside) "
          f"at B={batch}. {how}\n\n" + "\n".join(lines) +
          f"\n\n{image}\n\nThe ladder moves test accuracy from "
          f"{first:.2f}% to {last:.2f}% ({last - first:+.2f} points).\n")


def hoffer_rows(chosen) -> Dict[str, dict]:
  """setting -> row of Hoffer's test: small, '' (equal epochs), sqrt, sqrt-gbn, regime."""
  tests = [e["row"] for e in chosen.values() if e["row"]["section"] == "hoffer"]
  if not tests:
    return {}
  optimizer, batch = tests[0]["optimizer"], tests[0]["batch_size"]
  line = choice.sweep_line(chosen, optimizer)
  found = {r["variant"]: r for r in tests if r["batch_size"] == batch}
  found.update({"": r for r in line if r["batch_size"] == batch})
  if line:
    found["small"] = line[0]
  return found


def section_hoffer(chosen, report_dir: str) -> str:
  found = hoffer_rows(chosen)
  if "small" not in found or "" not in found:
    return ("## 5. Hoffer et al.'s test\n\nThis study has no Hoffer-test points "
            f"({'/'.join(HOFFER_VARIANTS)}) next to a batch sweep of the same optimizer.\n")
  small, large = found["small"], found[""]
  lines = ["| setting | batch | epochs | updates | test accuracy (%) | ‖w − w0‖ | gap closed |",
           "|---|---|---|---|---|---|---|",
           f"| small batch | {small['batch_size']} | {small['epochs']:g} | {small['updates']} | "
           f"{choice.outcome(small)} | {small['final_distance'] or 0:.4g} | |"]
  names, values = [f"B={small['batch_size']}"], [100 * (small["final_accuracy"] or 0)]
  for variant in ("",) + HOFFER_VARIANTS:
    row = found.get(variant)
    if row is None:
      continue
    fraction = diffusion.gap_closed_fraction(
        small["final_accuracy"] or 0, large["final_accuracy"] or 0, row["final_accuracy"] or 0)
    lines.append(f"| {HOFFER_LABELS[variant]} | {row['batch_size']} | {row['epochs']:g} | "
                 f"{row['updates']} | {choice.outcome(row)} | {row['final_distance'] or 0:.4g} | "
                 f"{'' if variant == '' or math.isnan(fraction) else f'{fraction:.0%}'} |")
    names.append(HOFFER_LABELS[variant].replace(" (linear LR)", ""))
    values.append(100 * (row["final_accuracy"] or 0))
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(8, 3.5))
  ax.bar(names, values)
  ax.set(ylabel="test accuracy (%)", ylim=(max(0, min(values) - 5), 100),
         title=f"Hoffer et al.'s test at B={large['batch_size']}")
  ax.tick_params(axis="x", labelsize=7)
  image = plots.save(fig, report_dir, "hoffer_test.png")
  adapted = found.get("regime")
  closing = ("No regime-adaptation point ran." if adapted is None else
             f"Regime adaptation ({adapted['updates']} updates, as many as B="
             f"{small['batch_size']}'s {small['updates']}) reaches {choice.outcome(adapted)}% against "
             f"{choice.outcome(small)}% for the small batch: the gap "
             + ("closes." if (adapted["final_accuracy"] or 0) >= (small["final_accuracy"] or 0)
                - diffusion.GAP_TOLERANCE else "does not close."))
  return ("## 5. Hoffer et al.'s test\n\nAt a large batch, from equal epochs, each remedy of "
          "Hoffer et al. is added in turn (sqrt LR scaling, ghost batch norm, then regime "
          "adaptation: as many updates as the small batch, the schedule stretched the same "
          "way). 'Gap closed' is the share of the small-vs-large accuracy gap recovered.\n\n"
          + "\n".join(lines) + f"\n\n{image}\n\n{closing}\n")


def section_diffusion(records, chosen, report_dir: str) -> str:
  found = hoffer_rows(chosen)
  optimizer = found[""]["optimizer"] if "" in found else "momentum"
  rows = list(choice.sweep_line(chosen, optimizer))
  rows += [found[v] for v in HOFFER_VARIANTS if v in found]
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(7, 4))
  table = ["| point | updates | a | b | R² (log) | c | p | R² (power) | logarithmic |",
           "|---|---|---|---|---|---|---|---|---|"]
  fits = []
  for row in rows:
    train = [r for r in _curves(records, row["name"])["train"]
             if isinstance(r.get("distance_from_init"), float) and r["distance_from_init"] > 0]
    if row["status"] != "finished" or len(train) < MIN_FIT_UPDATES:
      continue
    t = np.array([r["step"] for r in train], float)
    d = np.array([r["distance_from_init"] for r in train], float)
    log_fit, power_fit = diffusion.fit_log(t, d), diffusion.fit_power(t, d)
    if row["section"] == "sweep":
      fits.append((row["batch_size"], log_fit, power_fit))
    line, = ax.plot(t, d, lw=1, label=row["name"])
    ax.plot(t, log_fit.a * np.log(t) + log_fit.b, "--", lw=0.8, color=line.get_color())
    table.append(f"| `{row['name']}` | {len(t)} | {log_fit.a:.4g} | {log_fit.b:.4g} | "
                 f"{log_fit.r2:.4f} | {power_fit.c:.4g} | {power_fit.p:.4g} | "
                 f"{power_fit.r2:.4f} | "
                 f"{'yes' if diffusion.is_logarithmic(log_fit, power_fit) else 'no'} |")
  ax.set_xscale("log")
  ax.set(xlabel="update t (log scale)", ylabel="‖w_t − w_0‖",
         title=f"Distance from initialization ({optimizer}; dashed: a·log t + b)")
  plots.legend(ax, fontsize=6)
  image = plots.save(fig, report_dir, "diffusion.png")
  adapted = found.get("regime")
  if (fits and adapted is not None and adapted["status"] == "finished" and "small" in found
      and "" in found):
    small, large = found["small"], found[""]
    verdict = diffusion.diffusion_verdict(
        fits, small_batch=small["batch_size"], small_accuracy=small["final_accuracy"] or 0,
        small_distance=small["final_distance"] or 0, large_batch=large["batch_size"],
        large_accuracy=large["final_accuracy"] or 0,
        adapted_accuracy=adapted["final_accuracy"], adapted_distance=adapted["final_distance"])
    verdict_text = verdict.text
  else:
    logarithmic = [b for b, lf, pf in fits if diffusion.is_logarithmic(lf, pf)]
    verdict_text = (f"‖w_t − w_0‖ grows logarithmically at {len(logarithmic)} of {len(fits)} "
                    "batch sizes; without a regime-adaptation point the second half of "
                    "Hoffer et al.'s claim is not tested here.")
  return ("## 6. Ultra-slow diffusion\n\nLeast-squares fits of ‖w_t − w_0‖ over every "
          f"update of each run with at least {MIN_FIT_UPDATES} updates: a·log t + b against "
          "c·t^p (R² of the distance itself; "
          f"'logarithmic' = log fit R² ≥ {diffusion.MIN_R2} and at least the power law's). "
          "The fits span each whole run, warmup and decay included, while Hoffer et al. "
          "state the law for the initial high-learning-rate phase."
          f"\n\n" + "\n".join(table) + f"\n\n{image}\n\n**Verdict.** {verdict_text}\n")


def write(workdir: str, rows: Sequence[dict], records: Dict[str, list]) -> str:
  """Writes report.md and its PNGs from the rows and each point's records
  (name -> metrics.jsonl records); returns its path."""
  report_dir = os.path.join(workdir, layout.REPORT)
  files.makedirs(report_dir)
  chosen = choice.choose_learning_rates(rows)
  counts = {s: sum(r["status"] == s for r in rows) for s in
            ("finished", "diverged", "failed", "running")}
  wall = sum(r["wall_time_s"] or 0 for r in rows)
  models = sorted({json.loads(r["config_json"])["model"]["name"] for r in rows})
  header = (f"# Batch-size study: `{workdir}`\n\n{len(rows)} points ("
            + ", ".join(f"{n} {s}" for s, n in counts.items() if n) +
            f"), model {', '.join(models) or '—'}, {wall / 60:.1f} min of training in total. "
            "Every number below is read from the point workdirs (results.sqlite is "
            "derived from them).\n")
  limits = limit_sections.load_limits(workdir)
  measured = {label: (limit_sections.b_crit_of(s), bool(s.get("inside_measured_range")))
              for label, s in limits.items() if limit_sections.b_crit_of(s) is not None}
  rows_chosen = [e["row"] for e in chosen.values()]
  spread = max((width for width, _ in tuned_sections.seed_spread(rows).values()), default=0.0)
  sections = [header, section_accuracy(chosen, report_dir, spread),
              limit_sections.section_measured_limit(limits, report_dir),
              section_curves(records, chosen, report_dir),
              section_ladder(chosen, report_dir), section_hoffer(chosen, report_dir),
              section_diffusion(records, chosen, report_dir),
              batch_sections.section_noise_scale(records, rows_chosen, measured, report_dir),
              batch_sections.section_schedules(records, rows_chosen, report_dir),
              tuned_sections.section_best_lr(rows, limits, report_dir),
              tuned_sections.section_costs(rows)]
  # This study's full-batch answer, or a sibling directory's (DIR/../*/full_batch.json).
  sections += [s for s in [full_batch.section_for(workdir, rows, records, report_dir)] if s]
  path = os.path.join(report_dir, layout.REPORT_MD)
  faults.moment("report")
  files.write_text_atomic(path, "\n".join(sections))
  return path


def build_report(workdir: str) -> str:
  """Rebuilds results.sqlite from the point workdirs, then writes
  workdir/report/report.md and its PNGs; returns the report's path. Each
  point's records are read once."""
  rows, points = results.rebuild_database(workdir)
  return write(workdir, rows, {name: p.records for name, p in points.items()})


def main_table(workdir: str) -> str:
  """The accuracy-vs-batch table in markdown (from results.sqlite), for the console."""
  return choice.accuracy_table(choice.choose_learning_rates(results.read_database(workdir)))
