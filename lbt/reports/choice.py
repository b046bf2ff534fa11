"""Which runs stand for each cell of a study, and the accuracy table built
from them. Every section of the report reads these.

A searched cell (its trials carry a learning rate) is what the runner chose
when its search ended: DIR/choices/<cell>.json (`layout.choice_file`), read
as written, never recomputed. Its runs are the choice's `chosen_runs` (seed 0
first, then the seed reruns, section "seed"); a searched cell without a
choice file has not finished its search and says so. Any other cell is its
one point, with the seed reruns of it (`of` the cell) where the study has some.
A cell's number is the mean test accuracy over its finished runs with its
interval (`lbt.stats.intervals`).
"""

import dataclasses
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from lbt.io import files, layout
from lbt.reports import plots
from lbt.stats import intervals

UNBRACKETED = "†"


@dataclasses.dataclass(frozen=True)
class CellResult:
  """One cell of a study as the report shows it."""
  name: str
  trials: Tuple[dict, ...]             # its own rows (a searched cell's trials)
  row: dict                            # the run that stands for it (seed 0)
  runs: Tuple[dict, ...]               # every run of its chosen learning rate
  choice: Optional[dict]               # the runner's choice; None if not searched or pending
  searched: bool
  estimate: Optional[intervals.Estimate]  # test accuracy over its finished runs

  @property
  def pending(self) -> bool:
    """A searched cell whose search has not ended (no choice written)."""
    return self.searched and self.choice is None

  @property
  def bracketed(self) -> bool:
    return bool(self.choice and self.choice.get("bracketed"))

  def mark(self) -> str:
    """† when the search did not bracket its best."""
    return UNBRACKETED if self.choice is not None and not self.bracketed else ""

  def outcome(self) -> str:
    """What the cell measured, or what happened instead."""
    if self.pending:
      return "search not finished"
    if self.estimate is None:
      return outcome(self.row)
    if self.estimate.n == 1:
      return plots.pct(self.estimate.mean)
    return f"{plots.pct(self.estimate.mean)}{_half(self.estimate)} (n={self.estimate.n})"

  def table_text(self) -> str:
    """The cell in the accuracy table: its mean ± half-interval, † when its
    search did not bracket its best, then (n=k) its seeds, or, for a cell of
    one run, (k) the rates its search or grid tried (as before seeds)."""
    if self.estimate is not None and self.estimate.n > 1:
      return self.outcome() + self.mark()
    rates = len(self.choice["trials"]) if self.choice else 0
    return self.outcome() + self.mark() + (f" ({rates})" if rates > 1 else "")


def _half(estimate: intervals.Estimate) -> str:
  return f" ±{50 * (estimate.high - estimate.low):.2f}" if estimate.has_interval else ""


def read_choice(workdir: str, cell: str) -> Optional[dict]:
  """The runner's choice for a searched cell; None while its search has not ended."""
  text = files.read_text(os.path.join(workdir, layout.choice_file(cell)))
  try:
    value = None if text is None else json.loads(text)
  except ValueError:
    return None
  return value if isinstance(value, dict) else None


def seed_of(row: dict) -> int:
  """A run's seed: its role's, 0 for a cell's own run."""
  return row.get("seed") or 0


def estimate_of(runs: Sequence[dict]) -> Optional[intervals.Estimate]:
  """The mean test accuracy of the finished runs, with its interval."""
  done = [r for r in runs if r["status"] == "finished" and r["final_accuracy"] is not None]
  if not done:
    return None
  return intervals.mean_interval([r["final_accuracy"] for r in done],
                                 seeds=[seed_of(r) for r in done])


def _cell(workdir: str, name: str, trials: List[dict], reruns: List[dict]) -> CellResult:
  searched = any(r.get("learning_rate") is not None for r in trials)
  if not searched:
    runs = trials[:1] + sorted(reruns, key=seed_of)
    return CellResult(name, tuple(trials), trials[0], tuple(runs), None, False, estimate_of(runs))
  choice = read_choice(workdir, name)
  if choice is None:
    return CellResult(name, tuple(trials), trials[0], (), None, True, None)
  by_name = {r["name"]: r for r in trials + reruns}
  runs = [by_name[n] for n in choice.get("chosen_runs") or [] if n in by_name]
  row = runs[0] if runs else trials[0]
  return CellResult(name, tuple(trials), row, tuple(runs), choice, True, estimate_of(runs))


def cells(workdir: str, rows: Sequence[dict]) -> Dict[str, CellResult]:
  """cell -> CellResult, in study order, for every cell but the seed reruns (which
  belong to the cell they rerun)."""
  own: Dict[str, List[dict]] = {}
  reruns: Dict[str, List[dict]] = {}
  for row in rows:
    if row.get("section") == "seed":
      reruns.setdefault(row.get("seed_of"), []).append(row)
    else:
      own.setdefault(row["cell"], []).append(row)
  return {name: _cell(workdir, name, trials, reruns.get(name, []))
          for name, trials in own.items()}


def outcome(row) -> str:
  """A row's accuracy, or what happened instead."""
  if row["status"] == "finished":
    return plots.pct(row["final_accuracy"])
  if row["status"] == "diverged":
    return f"diverged@{row['diverged_update']}"
  return row["status"]


def sweep(found: Dict[str, CellResult]) -> Dict[str, List[CellResult]]:
  """The batch sweep, series label -> cells by batch."""
  series: Dict[str, List[CellResult]] = {}
  for cell in found.values():
    if cell.row["section"] == "sweep":
      label = cell.row["optimizer"] + (" (LR tuned)" if cell.searched else "")
      series.setdefault(label, []).append(cell)
  return {k: sorted(v, key=lambda c: c.row["batch_size"]) for k, v in series.items()}


def sweep_line(found: Dict[str, CellResult], optimizer: str) -> List[CellResult]:
  """An optimizer's batch sweep: its rule-LR cells, or its tuned cells when
  the sweep has no others."""
  lines = sweep(found)
  return lines.get(optimizer) or lines.get(f"{optimizer} (LR tuned)", [])


def accuracy_table(found: Dict[str, CellResult]) -> str:
  """Mean test accuracy (%) ± the half-width of its interval, by optimizer
  and batch, as markdown; (n=k): the seeds of its mean."""
  lines = sweep(found)
  batches = sorted({c.row["batch_size"] for cells_ in lines.values() for c in cells_})
  if not batches:
    return "(no batch-sweep points yet)"
  out = ["| optimizer | " + " | ".join(str(b) for b in batches) + " |",
         "|---|" + "---|" * len(batches)]
  for label, series in lines.items():
    by_batch = {c.row["batch_size"]: c.table_text() for c in series}
    out.append(f"| {label} | " + " | ".join(by_batch.get(b, "") for b in batches) + " |")
  updates = {c.row["batch_size"]: c.row["updates"] for cells_ in lines.values()
             for c in cells_ if c.row.get("updates")}
  out.append("| updates | " + " | ".join(str(updates.get(b, "")) for b in batches) + " |")
  if any(c.searched for c in found.values()):
    out.append(f"\n±: half the {intervals.LEVEL:.0%} interval of the mean over the seeds "
               f"(n=k) at the chosen learning rate; (k) alone: one run, of a cell that tried "
               f"k rates; {UNBRACKETED}: the search did not bracket its best (reasons below).")
  return "\n".join(out)


def bracket_notes(found: Dict[str, CellResult]) -> str:
  """One line per searched cell whose best is not bracketed (the runner's
  reason) or whose search has not ended; a sentence when there is none."""
  lines = [f"- {UNBRACKETED} `{c.name}`: {c.choice.get('reason') or 'not bracketed'}"
           for c in found.values() if c.choice is not None and not c.bracketed]
  lines += [f"- `{c.name}`: its search has not finished (no choice written yet)"
            for c in found.values() if c.pending]
  if lines:
    return "\n".join(lines)
  return ("Every tuned cell's optimum is bracketed." if any(c.searched for c in found.values())
          else "No cell was tuned.")
