"""A study's report: DIR/report/report.md and its PNG plots, from the point workdirs.

  python -m lbt.report DIR [--include=OTHER_DIR,...]

`build_report` first rebuilds results.sqlite from the workdirs
(`lbt.studies.results.rebuild_database`), then writes the Answers and ten
sections, one function each, in modules by subject (§1 `sweep_sections`, §2
`limit_sections`, §4-§6 `recipe_sections`, §7-§8 `batch_sections`, §9-§10
`tuned_sections`, the full batch `full_batch`); each draws its PNG with
matplotlib (Agg, no display, `lbt.reports.plots`) and writes its sentences
from the measured numbers only, so a result that contradicts the paper is
stated as such. The report never trains and writes nothing outside
DIR/report/ but results.sqlite: what a study needs written (its searched
cells' choices, the full-batch summary) the runner wrote when the work ended.

Each row carries its point's role (`lbt.studies.points`), and the sections
find their cells by it, never by name (`lbt.reports.choice`): a searched
cell is the runner's choice and the seeds of its chosen learning rate, any
other cell its point and its seed reruns; every number is a mean over seeds
with its interval, and every comparison the interval rule of
`lbt.reports.compare`. Another study's full-batch answer is shown only when
named (`include`).

References:
  You et al. 2020, "The Limit of the Batch Size", https://arxiv.org/abs/2006.08517
  Hoffer, Hubara & Soudry 2017, https://arxiv.org/abs/1705.08741"""

import json
import os
from typing import Dict, Sequence

from lbt.io import faults, files, layout
from lbt.reports import (answers, batch_sections, choice, full_batch, limit_sections, plots,
                         recipe_sections, sweep_sections, tuned_sections)
from lbt.reports.choice import CellResult
from lbt.studies import results


def section_curves(records, found: Dict[str, CellResult], report_dir: str) -> str:
  """§3: training loss and test accuracy of each cell's seed-0 run."""
  plt = plots.pyplot()
  groups = {label: [c.row for c in series] for label, series in choice.sweep(found).items()}
  # Schedule points are drawn against examples, in batch_sections' section.
  others = [c.row for c in found.values() if c.row["section"] not in ("sweep", "schedule")]
  if others:
    groups["recipe ladder, Hoffer's test and other variants"] = others
  images = []
  for index, (label, rows) in enumerate(groups.items()):
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
      per_epoch = row["updates"] / row["epochs"] if row["epochs"] else 1
      train = [r for r in records[row["name"]]
               if r["kind"] == "train" and isinstance(r["loss"], float)]
      evals = [r for r in records[row["name"]] if r["kind"] == "eval"]
      ax_l.plot([r["step"] / per_epoch for r in train], [r["loss"] for r in train],
                lw=0.8, label=row["name"])
      ax_a.plot([r["step"] / per_epoch for r in evals],
                [100 * r["accuracy"] for r in evals], "o-", ms=2, label=row["name"])
    ax_l.set(xlabel="epoch", ylabel="training loss", yscale="log", title=label)
    ax_a.set(xlabel="epoch", ylabel="test accuracy (%)", title=label)
    plots.legend(ax_a, fontsize=6)
    images.append(plots.save(fig, report_dir, f"curves_{index}.png"))
  return ("## 3. Training loss and test accuracy per cell (seed 0)\n\n" +
          ("\n\n".join(images) or "(no points yet)") + "\n")


def _header(workdir: str, rows: Sequence[dict]) -> str:
  counts = {s: sum(r["status"] == s for r in rows) for s in
            ("finished", "diverged", "failed", "running")}
  wall = sum(r["wall_time_s"] or 0 for r in rows)
  models = sorted({json.loads(r["config_json"])["model"]["name"] for r in rows})
  return (f"# Batch-size study: `{workdir}`\n\n{len(rows)} points ("
          + ", ".join(f"{n} {s}" for s, n in counts.items() if n) +
          f"), model {', '.join(models) or '—'}, {wall / 60:.1f} min of training in total. "
          "Every number below is read from the point workdirs (results.sqlite is "
          "derived from them) and the searches' choices the runner wrote.\n")


def write(workdir: str, rows: Sequence[dict], records: Dict[str, list],
          include: Sequence[str] = ()) -> str:
  """Writes report.md and its PNGs from the rows and each point's records
  (name -> metrics.jsonl records); returns its path. `include`: other study
  directories whose full-batch answer the report shows."""
  report_dir = os.path.join(workdir, layout.REPORT)
  files.makedirs(report_dir)
  found = choice.cells(workdir, rows)
  limits = limit_sections.load_limits(workdir)
  summaries = full_batch.summaries(workdir, include)
  stands = [c.row for c in found.values()]
  sections = [_header(workdir, rows), answers.section_answers(found, limits, summaries),
              sweep_sections.section_accuracy(found, report_dir),
              limit_sections.section_measured_limit(limits, report_dir),
              section_curves(records, found, report_dir),
              recipe_sections.section_ladder(found, report_dir),
              recipe_sections.section_hoffer(found, report_dir),
              recipe_sections.section_diffusion(records, found, report_dir),
              batch_sections.section_noise_scale(records, stands, limits, report_dir),
              batch_sections.section_schedules(records, list(found.values()), report_dir),
              tuned_sections.section_best_lr(found, limits, report_dir),
              tuned_sections.section_costs(rows, found)]
  sections += [s for s in [full_batch.section_for(workdir, include, report_dir)] if s]
  path = os.path.join(report_dir, layout.REPORT_MD)
  faults.moment("report")
  files.write_text_atomic(path, "\n".join(sections))
  return path


def build_report(workdir: str, include: Sequence[str] = ()) -> str:
  """Rebuilds results.sqlite from the point workdirs, then writes
  workdir/report/report.md and its PNGs; returns the report's path. Each
  point's records are read once. `include`: other study directories whose
  full-batch answer the report shows (named, never found by looking around)."""
  rows, points = results.rebuild_database(workdir)
  return write(workdir, rows, {name: p.records for name, p in points.items()}, include)


def main_table(workdir: str) -> str:
  """The accuracy-vs-batch table in markdown (from results.sqlite), for the console."""
  return choice.accuracy_table(choice.cells(workdir, results.read_database(workdir)))
