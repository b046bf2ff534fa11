"""§1 of a study's report: test accuracy against the batch at equal epochs.

Each cell is the mean test accuracy over the runs of its chosen learning
rate with its interval (`lbt.reports.choice`); the best batch, the batches
within one point of it and the ranking at the largest batch are all decided
by the interval rule of `lbt.reports.compare`, never by the means alone.
"""

from typing import Dict, List, Optional, Tuple

from lbt.reports import choice, compare, plots
from lbt.reports.choice import CellResult


def _measured(series: List[CellResult]) -> List[CellResult]:
  return [c for c in series if c.estimate is not None]


Best = Tuple[CellResult, List[CellResult], List[CellResult]]


def best_and_near(series: List[CellResult]) -> Optional[Best]:
  """(the cell of the best mean, the cells tied with it within seed noise,
  the cells within one point of it by the interval rule); None when nothing
  finished."""
  done = _measured(series)
  if not done:
    return None
  best = max(done, key=lambda c: c.estimate.mean)
  tied = [c for c in done if c is not best and not compare.untestable(c.estimate, best.estimate)
          and compare.relation(c.estimate, best.estimate) == compare.TIE]
  near = [c for c in done if compare.within(c.estimate, best.estimate)]
  return best, tied, near


def _batches(found: List[CellResult]) -> str:
  return ", ".join(f"{c.row['batch_size']:,}" for c in found)


def series_text(label: str, series: List[CellResult]) -> str:
  """One optimizer's best, its ties, how far within one point reaches, and
  the largest batch against the best."""
  result = best_and_near(series)
  if result is None:
    return f"- **{label}**: no cell finished yet."
  best, tied, near = result
  one_seed = [c for c in _measured(series)
              if c is not best and compare.untestable(c.estimate, best.estimate)]
  largest = series[-1]
  text = (f"- **{label}**: best mean {best.estimate.text()} at B={best.row['batch_size']:,}"
          + (f", tied with it within seed noise at B={_batches(tied)}" if tied else "")
          + f"; within 1 point of it (not separated below best − 1 point) up to "
          f"B={max(c.row['batch_size'] for c in near):,}"
          + (f" (one seed on a side at B={_batches(one_seed)}: there the means decide, "
             "untested against seed noise)" if one_seed else "")
          + f"; at the largest batch B={largest.row['batch_size']:,}: ")
  if largest.estimate is None or largest is best:
    return text + (largest.outcome() if largest is not best else "the best itself") + "."
  return text + (f"{largest.estimate.text()}, "
                 f"{compare.difference_text(largest.estimate, best.estimate)}.")


def largest_batch_ranking(found: Dict[str, CellResult]) -> Optional[Tuple[int, str, Optional[str]]]:
  """(the largest batch of the sweep, its ranking in words, the winner's
  label when it separates from every other); None without a sweep."""
  lines = choice.sweep(found)
  largest = max((c.row["batch_size"] for s in lines.values() for c in s), default=None)
  entries = [(label, c.estimate) for label, s in lines.items() for c in s
             if c.row["batch_size"] == largest and c.estimate is not None]
  if not entries:
    return None
  text, winner = compare.ranking(entries)
  return largest, text, winner


def _plot(found: Dict[str, CellResult], report_dir: str) -> str:
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(7, 4))
  for label, series in choice.sweep(found).items():
    done = _measured(series)
    batches = [c.row["batch_size"] for c in done]
    means = [100 * c.estimate.mean for c in done]
    errors = [[100 * (c.estimate.mean - (c.estimate.low if c.estimate.has_interval
                                         else c.estimate.mean)) for c in done],
              [100 * ((c.estimate.high if c.estimate.has_interval else c.estimate.mean)
                      - c.estimate.mean) for c in done]]
    ax.errorbar(batches, means, yerr=errors, fmt="o-", capsize=3, label=label)
  ax.set_xscale("log", base=2)
  ax.set(xlabel="batch size", ylabel="test accuracy (%)",
         title="Test accuracy vs batch size (bars: interval over seeds)")
  plots.legend(ax)
  return plots.save(fig, report_dir, "accuracy_vs_batch.png")


def _tuned_text(found: Dict[str, CellResult]) -> str:
  lines = []
  for c in found.values():
    if c.choice is None or c.choice.get("learning_rate") is None:
      continue
    trials = sorted(c.choice.get("trials") or [], key=lambda t: t["learning_rate"])
    tried = ", ".join(
        f"{t['learning_rate']:.3g} ({plots.pct(t['score'])}% val)" if t.get("score") is not None
        else f"{t['learning_rate']:.3g} ({t.get('status', '—')})" for t in trials)
    lines.append(f"- `{c.name}`: base LR {c.choice['learning_rate']:.3g} (tied "
                 f"{c.choice['tied_low']:.3g}–{c.choice['tied_high']:.3g}) among {tried}"
                 f"{c.mark()}")
  return "\n".join(lines) or "- none"


def section_accuracy(found: Dict[str, CellResult], report_dir: str) -> str:
  """§1: the table, the figure, each optimizer's best and reach, the ranking."""
  image = _plot(found, report_dir)
  text = [series_text(label, s) for label, s in choice.sweep(found).items()]
  ranked = largest_batch_ranking(found)
  if ranked is not None:
    largest, ranking, _ = ranked
    text.append(f"- At B={largest:,}, from best to worst mean: {ranking}.")
  return ("## 1. Test accuracy vs batch size\n\nEach cell trains for the same number of "
          "epochs, so a larger batch takes fewer updates. Mean test accuracy (%) over the "
          "seeds at the cell's learning rate; two cells differ only where their intervals "
          "separate (paired by seed where they share seeds), otherwise they tie within "
          f"seed noise:\n\n{choice.accuracy_table(found)}\n\n"
          f"{choice.bracket_notes(found)}\n\n{image}\n\n" + "\n".join(text) +
          "\n\nCells whose learning rate was searched (on the validation split held out "
          "from the training set, never on the test set): the runner's choice, the rates "
          "tied with it, and each trial's validation score; every other cell uses the "
          f"scaling rule of its config, untuned:\n\n{_tuned_text(found)}\n")
