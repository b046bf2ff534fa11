"""§4-§6 of a study's report: the recipe ladder, Hoffer et al.'s test and the
ultra-slow diffusion.

Every gain and every "the gap closes" is decided by the interval rule of
`lbt.reports.compare` over the seeds of each cell, and says how many seeds
each side has.

References:
  Hoffer, Hubara & Soudry 2017, https://arxiv.org/abs/1705.08741
  You et al. 2020, "The Limit of the Batch Size", https://arxiv.org/abs/2006.08517
"""

import json
import math
from typing import Dict, List, Optional, Sequence

import numpy as np

from lbt.engine import config as config_lib
from lbt.reports import choice, compare, plots
from lbt.reports.choice import CellResult
from lbt.stats import diffusion
from lbt.studies.points import HOFFER_VARIANTS

MIN_FIT_UPDATES = 8  # Fewer updates than this make a two-parameter fit meaningless.
# Bookkeeping fields, not ingredients of a recipe step.
BOOKKEEPING = ("dataset.", "eval_every_steps", "log_every_steps", "checkpoint_")
HOFFER_LABELS = {"": "equal epochs (linear LR)", "sqrt": "+ sqrt LR scaling",
                 "sqrt-gbn": "+ ghost BN", "regime": "+ regime adaptation"}


def _changes(before: dict, after: dict, skip: Sequence[str] = ()) -> str:
  old, new = json.loads(before["config_json"]), json.loads(after["config_json"])
  fields = [f for f in config_lib.changed_fields(old, new)
            if not f.startswith(BOOKKEEPING + tuple(skip))]

  def value(tree, field):
    for part in field.split("."):
      tree = tree.get(part, "—") if isinstance(tree, dict) else "—"
    return tree
  return "; ".join(f"{f}: {value(old, f)} → {value(new, f)}" for f in fields) or "none"


def ladder_cells(found: Dict[str, CellResult]) -> List[CellResult]:
  """The ladder's rungs in order (the rule-LR reference points aside)."""
  return sorted((c for c in found.values() if c.row["section"] == "ladder"
                 and not c.row.get("rule")), key=lambda c: c.row["rung"])


def ladder_finding(found: Dict[str, CellResult]) -> Optional[str]:
  """What the whole ladder buys: its last rung against its first."""
  rungs = [c for c in ladder_cells(found) if c.estimate is not None]
  if len(rungs) < 2:
    return None
  first, last = rungs[0], rungs[-1]
  return (f"from {first.estimate.text()} (rung {first.row['rung']}) to "
          f"{last.estimate.text()} (rung {last.row['rung']}): "
          f"{compare.difference_text(last.estimate, first.estimate)}")


def _rung_line(cell: CellResult, previous: Optional[CellResult], rule: Optional[CellResult]) -> str:
  row, k = cell.row, cell.row["rung"]
  gain = ""
  if previous is not None and cell.estimate is not None and previous.estimate is not None:
    gain = compare.difference_text(cell.estimate, previous.estimate)
  change = "baseline" if previous is None else (
      f"{row['change']}: {_changes(previous.row, row, ('optimizer.learning_rate',))}"
      if cell.searched else _changes(previous.row, row))
  rule_text = f"{rule.outcome()} ({rule.row['rule']})" if rule else ""
  return (f"| {k} | `{cell.name}` | {change} | {row['epochs']:g} | {row['updates'] or ''} | "
          f"{cell.outcome()}{cell.mark()} | {gain} | {row['base_learning_rate']:.4g} | "
          f"{rule_text} |")


def section_ladder(found: Dict[str, CellResult], report_dir: str) -> str:
  """§4: each rung's ingredient and its gain over the previous rung."""
  rungs = ladder_cells(found)
  if not rungs:
    return "## 4. The recipe ladder\n\nThis study has no recipe-ladder points.\n"
  rules = {c.row["rung"]: c for c in found.values()
           if c.row["section"] == "ladder" and c.row.get("rule")}
  lines = ["| step | cell | what changed | epochs | updates | test accuracy (%) | "
           "gain over the previous rung | base LR | at the rule's LR (%) |",
           "|---|---|---|---|---|---|---|---|---|"]
  lines += [_rung_line(c, rungs[i - 1] if i else None, rules.get(c.row["rung"]))
            for i, c in enumerate(rungs)]
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(8, 3.5))
  ax.bar([str(c.row["rung"]) for c in rungs],
         [100 * c.estimate.mean if c.estimate else 0.0 for c in rungs])
  batch = rungs[0].row["batch_size"]
  ax.set(xlabel="recipe step", ylabel="mean test accuracy (%)",
         title=f"Recipe ladder at B={batch} (0 = diverged)")
  image = plots.save(fig, report_dir, "recipe_ladder.png")
  how = ("Each rung's learning rate is searched on the validation split from the previous "
         "rung's best, so a rung measures its ingredient at its own best learning rate; "
         "the rungs whose ingredient is a learning-rate rule also ran once at the rule's "
         "own learning rate (last column). " if any(c.searched for c in rungs) else "")
  finding = ladder_finding(found)
  return ("## 4. The recipe ladder\n\nFrom the Goyal et al. baseline, each step adds one "
          "ingredient (the config fields it changes are listed, the learning rate aside) "
          f"at B={batch}. {how}A gain is a tie unless the two rungs' intervals separate.\n\n"
          + "\n".join(lines) + f"\n\n{image}\n\n"
          + (f"The ladder moves mean test accuracy {finding}.\n" if finding else ""))


def hoffer_cells(found: Dict[str, CellResult]) -> Dict[str, CellResult]:
  """setting -> cell of Hoffer's test: small, '' (equal epochs), sqrt, sqrt-gbn, regime."""
  tests = [c for c in found.values() if c.row["section"] == "hoffer"]
  if not tests:
    return {}
  optimizer, batch = tests[0].row["optimizer"], tests[0].row["batch_size"]
  line = choice.sweep_line(found, optimizer)
  result = {c.row["variant"]: c for c in tests if c.row["batch_size"] == batch}
  result.update({"": c for c in line if c.row["batch_size"] == batch})
  if line:
    result["small"] = line[0]
  return result


def gap_verdict(small: CellResult, adapted: CellResult) -> str:
  """Whether regime adaptation closes the gap to the small batch, by the
  interval rule, with both sides' seeds."""
  if small.estimate is None or adapted.estimate is None:
    return "not measured (a side has no finished run)"
  difference = compare.difference_text(adapted.estimate, small.estimate)
  verdict = compare.relation(adapted.estimate, small.estimate)
  if verdict == compare.BELOW:
    return f"does not close ({difference})"
  if compare.untestable(adapted.estimate, small.estimate):
    return f"cannot be told from one seed ({difference})"
  return f"closes ({difference})"


def _fraction(found: Dict[str, CellResult], cell: CellResult) -> str:
  small, large = found["small"].estimate, found[""].estimate
  if cell in (found["small"], found[""]) or None in (small, large, cell.estimate):
    return ""
  fraction = diffusion.gap_closed_fraction(small.mean, large.mean, cell.estimate.mean)
  return "" if math.isnan(fraction) else f"{fraction:.0%}"


def section_hoffer(found: Dict[str, CellResult], report_dir: str) -> str:
  """§5: each of Hoffer et al.'s remedies at one large batch."""
  cells = hoffer_cells(found)
  if "small" not in cells or "" not in cells:
    return ("## 5. Hoffer et al.'s test\n\nThis study has no Hoffer-test points "
            f"({'/'.join(HOFFER_VARIANTS)}) next to a batch sweep of the same optimizer.\n")
  small, large = cells["small"], cells[""]
  lines = ["| setting | batch | epochs | updates | test accuracy (%) | ‖w − w0‖ (seed 0) | "
           "gap closed (means) |", "|---|---|---|---|---|---|---|"]
  names, values = [], []
  for key, label in [("small", "small batch")] + [(v, HOFFER_LABELS[v])
                                                   for v in ("",) + HOFFER_VARIANTS]:
    if key not in cells:
      continue
    cell = cells[key]
    lines.append(f"| {label} | {cell.row['batch_size']} | {cell.row['epochs']:g} | "
                 f"{cell.row['updates']} | {cell.outcome()}{cell.mark()} | "
                 f"{cell.row['final_distance'] or 0:.4g} | {_fraction(cells, cell)} |")
    names.append(f"B={small.row['batch_size']}" if key == "small"
                 else label.replace(" (linear LR)", ""))
    values.append(100 * cell.estimate.mean if cell.estimate else 0.0)
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(8, 3.5))
  ax.bar(names, values)
  ax.set(ylabel="mean test accuracy (%)", ylim=(max(0, min(values) - 5), 100),
         title=f"Hoffer et al.'s test at B={large.row['batch_size']}")
  ax.tick_params(axis="x", labelsize=7)
  image = plots.save(fig, report_dir, "hoffer_test.png")
  adapted = cells.get("regime")
  closing = ("No regime-adaptation point ran." if adapted is None else
             f"Regime adaptation ({adapted.row['updates']} updates, as many as B="
             f"{small.row['batch_size']}'s {small.row['updates']}) against the small batch: "
             f"the gap {gap_verdict(small, adapted)}.")
  return ("## 5. Hoffer et al.'s test\n\nAt a large batch, from equal epochs, each remedy of "
          "Hoffer et al. is added in turn (sqrt LR scaling, ghost batch norm, then regime "
          "adaptation: as many updates as the small batch, the schedule stretched the same "
          "way). 'Gap closed' is the share of the small-vs-large gap in mean accuracy "
          "recovered; whether it closes is decided by the intervals.\n\n"
          + "\n".join(lines) + f"\n\n{image}\n\n{closing}\n")


def _fits(records, cells: Sequence[CellResult], ax) -> tuple:
  """The log and power fits of ‖w_t − w_0‖ of each cell's seed-0 run, drawn
  on `ax`; (table lines, [(batch, log fit, power fit)] of the sweep cells)."""
  table, fits = [], []
  for cell in cells:
    row = cell.row
    train = [r for r in records[row["name"]] if r["kind"] == "train"
             and isinstance(r.get("distance_from_init"), float) and r["distance_from_init"] > 0]
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
  return table, fits


def diffusion_verdict(fits, cells: Dict[str, CellResult]) -> str:
  """Hoffer et al.'s two claims, from the fits and from §5's gap verdict:
  (1) ‖w_t − w_0‖ grows like log t; (2) as many updates as the small batch
  close the gap (You et al. 2020 report that it fails at huge batches)."""
  logarithmic = [b for b, lf, pf in fits if diffusion.is_logarithmic(lf, pf)]
  growth = (f"‖w_t − w_0‖ grows logarithmically at {len(logarithmic)} of {len(fits)} batch "
            "sizes" + (f" ({', '.join(str(b) for b in logarithmic)})" if logarithmic else ""))
  adapted, small = cells.get("regime"), cells.get("small")
  if adapted is None or small is None or adapted.estimate is None or small.estimate is None:
    return (f"{growth}; without a finished regime-adaptation cell the second half of "
            "Hoffer et al.'s claim is not tested here.")
  far, near = adapted.row["final_distance"] or 0, small.row["final_distance"] or 0
  matched = abs(far - near) <= diffusion.DISTANCE_TOLERANCE * abs(near)
  gap = gap_verdict(small, adapted)
  distance = (f"the adapted run's distance from w_0 is {far:.4g} against {near:.4g} for the "
              f"small batch ({'matched' if matched else 'not matched'} within "
              f"{diffusion.DISTANCE_TOLERANCE:.0%})")
  if gap.startswith("does not close"):
    answer = ("this contradicts Hoffer et al., as You et al. 2020 report: the large batch "
              "travelled as far as the small one and still generalizes worse" if matched else
              "this contradicts Hoffer et al.'s conclusion: matching the number of updates "
              "does not close the gap")
  elif gap.startswith("closes"):
    answer = ("consistent with Hoffer et al.: the gap is a matter of the number of updates"
              if len(logarithmic) == len(fits) and fits else "the gap closes with the number "
              "of updates, but the distance does not grow logarithmically at every batch")
  else:
    answer = "undecided: one seed cannot tell whether the gap closes"
  return f"{growth}; regime adaptation: the gap {gap}; {distance}. Verdict: {answer}."


def section_diffusion(records, found: Dict[str, CellResult], report_dir: str) -> str:
  """§6: ‖w_t − w_0‖ against the update, fitted, and Hoffer et al.'s claims."""
  cells = hoffer_cells(found)
  optimizer = cells[""].row["optimizer"] if "" in cells else "momentum"
  shown = list(choice.sweep_line(found, optimizer))
  shown += [cells[v] for v in HOFFER_VARIANTS if v in cells]
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(7, 4))
  table, fits = _fits(records, shown, ax)
  ax.set_xscale("log")
  ax.set(xlabel="update t (log scale)", ylabel="‖w_t − w_0‖",
         title=f"Distance from initialization ({optimizer}; dashed: a·log t + b)")
  plots.legend(ax, fontsize=6)
  image = plots.save(fig, report_dir, "diffusion.png")
  header = ["| run | updates | a | b | R² (log) | c | p | R² (power) | logarithmic |",
            "|---|---|---|---|---|---|---|---|---|"]
  return ("## 6. Ultra-slow diffusion\n\nLeast-squares fits of ‖w_t − w_0‖ over every "
          f"update of each cell's seed-0 run with at least {MIN_FIT_UPDATES} updates: "
          "a·log t + b against c·t^p (R² of the distance itself; 'logarithmic' = log fit "
          f"R² ≥ {diffusion.MIN_R2} and at least the power law's). The fits span each whole "
          "run, warmup and decay included, while Hoffer et al. state the law for the "
          "initial high-learning-rate phase.\n\n" + "\n".join(header + table)
          + f"\n\n{image}\n\n**Verdict.** {diffusion_verdict(fits, cells)}\n")
