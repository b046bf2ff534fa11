"""The opening of a study's report: its answers, one line each with its
uncertainty and the section that shows how it was measured.

Each line is written by the same functions as its section (the interval rule
of `lbt.reports.compare`), so the answers cannot say more than the sections.
"""

from typing import Dict, List, Sequence, Tuple

from lbt.reports import choice, compare, full_batch, limit_report, recipe_sections
from lbt.reports import sweep_sections
from lbt.reports.choice import CellResult
from lbt.stats import intervals


def critical_batch(limits: Dict[str, dict]) -> List[str]:
  """Each optimizer's B_crit with its interval, and where doubling stops paying."""
  if not limits:
    return ["- **Critical batch**: not measured (the study ran no steps-to-target "
            "protocol; §2)."]
  lines = []
  for label, s in limits.items():
    if s.get("s_min") is None:
      lines.append(f"- **Critical batch, {label}**: no fit ({s.get('fit', 'too few batches')}; "
                   "§2).")
      continue
    b_crit = "∞" if s.get("b_crit") is None else limit_report.g(s["b_crit"])
    stops = s.get("doubling_stops_at")
    lines.append(f"- **Critical batch, {label}**: B_crit = {b_crit} ({s['level']:.0%} "
                 f"interval: {limit_report.bounds(s)}); doubling the batch "
                 + (f"stops paying from B={stops:,}" if stops else
                    "still paid at the largest batch measured") + " (§2).")
  return lines


def near_best(found: Dict[str, CellResult]) -> str:
  """The largest batch within one point of each optimizer's best."""
  parts = []
  for label, series in choice.sweep(found).items():
    result = sweep_sections.best_and_near(series)
    if result is None:
      continue
    best, _, near = result
    reach = max(near, key=lambda c: c.row["batch_size"])
    parts.append(f"{label} up to B={reach.row['batch_size']:,} (best "
                 f"{best.estimate.text()} at B={best.row['batch_size']:,})")
  if not parts:
    return "- **Within 1 point of the best at equal epochs**: no sweep cell finished (§1)."
  return ("- **Largest batch within 1 point of the best at equal epochs** (not separated "
          "below best − 1 point): " + "; ".join(parts) + " (§1).")


def winner(found: Dict[str, CellResult]) -> str:
  """Who wins at the sweep's largest batch, or a tie within seed noise."""
  ranked = sweep_sections.largest_batch_ranking(found)
  if ranked is None:
    return "- **At the largest batch**: no cell finished (§1)."
  largest, _, top = ranked
  lines = choice.sweep(found)
  entries: List[Tuple[str, intervals.Estimate]] = [
      (label, c.estimate) for label, s in lines.items() for c in s
      if c.row["batch_size"] == largest and c.estimate is not None]
  if len(entries) == 1:
    return (f"- **At the largest batch B={largest:,}**: only {top} finished, "
            f"{entries[0][1].text()} (§1).")
  if top is not None:
    estimate = dict(entries)[top]
    return (f"- **At the largest batch B={largest:,}**: {top} wins, {estimate.text()}, "
            "separated from every other optimizer (§1).")
  tied = compare.tied_with_top(entries)
  return (f"- **At the largest batch B={largest:,}**: tied within seed noise between "
          + ", ".join(f"{label} {dict(entries)[label].text()}" for label in tied) + " (§1).")


def remedies(found: Dict[str, CellResult], summaries: Sequence[Tuple[str, dict]]) -> List[str]:
  """What the recipe ladder buys; whether Hoffer's and Geiping's remedies close the gap."""
  ladder = recipe_sections.ladder_finding(found)
  lines = [f"- **The recipe ladder** moves mean test accuracy {ladder} (§4)." if ladder else
           "- **The recipe ladder**: not measured (§4)."]
  hoffer = recipe_sections.hoffer_cells(found)
  if "small" in hoffer and "regime" in hoffer:
    lines.append(f"- **Hoffer et al.'s regime adaptation** at "
                 f"B={hoffer['regime'].row['batch_size']:,}: the gap to "
                 f"B={hoffer['small'].row['batch_size']:,} "
                 f"{recipe_sections.gap_verdict(hoffer['small'], hoffer['regime'])} (§5).")
  else:
    lines.append("- **Hoffer et al.'s regime adaptation**: not measured (§5).")
  for label, summary in summaries:
    try:
      verdict = full_batch.gap_verdict(summary["arms"])
    except (KeyError, TypeError, ValueError, AttributeError):
      verdict = None
    lines.append(f"- **Geiping et al.'s full batch** (`{label}`): " + (
        f"the gap {verdict[0]}: {verdict[1]}" if verdict else "no verdict yet")
        + " (the full-batch section).")
  return lines


def section_answers(found: Dict[str, CellResult], limits: Dict[str, dict],
                    summaries: Sequence[Tuple[str, dict]]) -> str:
  """The Answers section: every line with its uncertainty and its section."""
  lines = critical_batch(limits) + [near_best(found), winner(found)] + remedies(
      found, summaries)
  return ("## Answers\n\nMeans are over the seeds at each cell's chosen learning rate, "
          f"with their {intervals.LEVEL:.0%} intervals; two numbers differ only where their "
          "intervals separate (paired by seed where they share seeds).\n\n"
          + "\n".join(lines) + "\n")
