"""Which trial stands for each cell of a study, and the accuracy table built
from those choices: a cell of several learning rates keeps the trial the
validation split chose (`tuned_sections.tuned_cell`, the runner's rule), a
cell of one point is that point. Every section of the report reads these."""

import math
from typing import Dict, List, Sequence

from lbt.reports import plots, tuned_sections


def choose_learning_rates(rows: Sequence[dict]) -> Dict[str, dict]:
  """cell -> {'row': chosen row, 'members': rows, 'criterion': text}.

  A cell of several base learning rates keeps the member with the best
  validation accuracy (held out from the training set, never the test set);
  members without a validation split fall back to the lowest final training
  loss, and the criterion says so.
  """
  cells: Dict[str, List[dict]] = {}
  for row in rows:
    cells.setdefault(row["cell"], []).append(row)
  chosen = {}
  for cell, members in cells.items():
    finished = [r for r in members if r["status"] == "finished"]
    if len(members) == 1 or not finished:
      chosen[cell] = {"row": members[0] if not finished else finished[0],
                      "members": members, "criterion": None}
    elif all(r["validation_accuracy"] is not None for r in finished):
      tuned = tuned_sections.tuned_cell(cell, members)
      chosen[cell] = {"row": tuned.best or finished[0], "members": members, "tuned": tuned,
                      "criterion": "validation accuracy"}
    else:
      best = min(finished, key=lambda r: r["final_train_loss"] or math.inf)
      chosen[cell] = {"row": best, "members": members,
                      "criterion": "final training loss (no validation split)"}
  return chosen


def grid_edge(entry: dict) -> str:
  """A warning when the chosen learning rate is not bracketed by the search."""
  if "tuned" in entry:
    bracket = entry["tuned"].choice.bracket
    return "" if bracket.bracketed else f" — **not bracketed: {bracket.reason}**"
  rates = sorted(m["base_learning_rate"] for m in entry["members"])
  chosen = entry["row"]["base_learning_rate"]
  if len(rates) < 2 or rates[0] < chosen < rates[-1]:
    return ""
  side = "lowest" if chosen == rates[0] else "highest"
  return (f" — **the {side} rate of its grid: the optimum was not bracketed and may lie "
          f"{'below' if side == 'lowest' else 'above'} it**")


def outcome(row) -> str:
  """A row's accuracy, or what happened instead."""
  if row["status"] == "finished":
    return plots.pct(row["final_accuracy"])
  if row["status"] == "diverged":
    return f"diverged@{row['diverged_update']}"
  return row["status"]


def sweep(chosen: Dict[str, dict]) -> Dict[str, List[dict]]:
  """The batch sweep, series label -> chosen rows by batch."""
  series: Dict[str, List[dict]] = {}
  for entry in chosen.values():
    row = entry["row"]
    if row["section"] == "sweep":
      label = row["optimizer"] + (" (LR tuned)" if tuned(row) else "")
      series.setdefault(label, []).append(row)
  return {k: sorted(v, key=lambda r: r["batch_size"]) for k, v in series.items()}


def accuracy_table(chosen: Dict[str, dict]) -> str:
  """Final test accuracy (%) by optimizer and batch, as markdown."""
  lines = sweep(chosen)
  batches = sorted({r["batch_size"] for rows in lines.values() for r in rows})
  if not batches:
    return "(no batch-sweep points yet)"
  out = ["| optimizer | " + " | ".join(str(b) for b in batches) + " |",
         "|---|" + "---|" * len(batches)]
  # A tuned cell of one learning rate was not tuned: it is starred; a search
  # that did not bracket its best is daggered; a tuned cell shows its trials.
  shown = {r["name"] for rows in lines.values() for r in rows}
  untuned = {e["row"]["name"] for e in chosen.values()
             if tuned(e["row"]) and len(e["members"]) == 1} & shown
  by_name = {e["row"]["name"]: e for e in chosen.values()}
  for label, rows in lines.items():
    by_batch = {r["batch_size"]: outcome(r) + ("*" if r["name"] in untuned else "")
                + trials_mark(by_name[r["name"]]) for r in rows}
    out.append(f"| {label} | " + " | ".join(by_batch.get(b, "") for b in batches) + " |")
  updates = {r["batch_size"]: r["updates"] for rows in lines.values() for r in rows
             if r.get("updates")}
  out.append("| updates | " + " | ".join(str(updates.get(b, "")) for b in batches) + " |")
  if untuned:
    out.append("\n\\* one learning rate only: not tuned at this batch.")
  if any("tuned" in e for e in chosen.values()):
    out.append(f"\n(n): trials of the cell's search; {tuned_sections.UNBRACKETED}: its best "
               "is not bracketed (reasons below).")
  return "\n".join(out)


def trials_mark(entry: dict) -> str:
  tuned = entry.get("tuned")
  if tuned is None or len(entry["members"]) == 1:
    return ""
  return f"{tuned.mark()} ({len(entry['members'])})"


def tuned(row: dict) -> bool:
  """Whether the row is a trial of a tuned cell (its role has a learning rate)."""
  return row["learning_rate"] is not None


def sweep_line(chosen, optimizer: str) -> List[dict]:
  """An optimizer's batch sweep: its rule-LR points, or its tuned cells when
  the sweep has no others."""
  lines = sweep(chosen)
  return lines.get(optimizer) or lines.get(f"{optimizer} (LR tuned)", [])
