"""How every sentence of a report compares two numbers measured over seeds.

One rule (`lbt.stats.intervals.separated`): two cells differ only when their
intervals separate, paired by seed where they share seeds; anything else is
a tie within seed noise, and a side measured on one seed has no interval, so
it ties with everything. Each comparison says how many seeds each side has.
"""

from typing import Optional, Sequence, Tuple

from lbt.stats import intervals
from lbt.stats.intervals import Estimate

ABOVE, BELOW, TIE = "above", "below", "tie"
POINT = 0.01  # one point of accuracy


def relation(a: Estimate, b: Estimate) -> str:
  """ABOVE, BELOW or TIE: a against b."""
  return {1: ABOVE, -1: BELOW, 0: TIE}[intervals.order(a, b)]


def untestable(a: Estimate, b: Estimate) -> bool:
  """Whether seed noise cannot be judged: no shared seeds to pair and a side
  of one seed."""
  return (intervals.paired_difference(a, b) is None
          and not (a.has_interval and b.has_interval))


def tie_text(a: Estimate, b: Estimate) -> str:
  """Why a and b tie, in words."""
  if untestable(a, b):
    return "a tie: one seed on a side, no interval to tell them apart"
  return "a tie within seed noise"


def difference_text(a: Estimate, b: Estimate) -> str:
  """a − b in points, how it was measured, and the verdict:
  "+1.20 points (paired over 3 shared seeds: +0.31 to +2.09): above"."""
  mean, paired = intervals.difference(a, b)
  how = intervals.seeds_text(a, b)
  if paired is not None and paired.has_interval:
    how += f": {100 * paired.low:+.2f} to {100 * paired.high:+.2f}"
  verdict = relation(a, b)
  return f"{100 * mean:+.2f} points ({how}): " + (
      tie_text(a, b) if verdict == TIE else verdict)


def within(a: Estimate, best: Estimate, margin: float = POINT) -> bool:
  """Whether a is not separated below `best` − margin: within `margin` of
  the best by the interval rule. Where seed noise cannot be judged (one seed
  on a side, `untestable`), the means decide, and the text must say so."""
  if untestable(a, best):
    return a.mean >= best.mean - margin
  return relation(a, intervals.shift(best, -margin)) != BELOW


def ranking(entries: Sequence[Tuple[str, Estimate]]) -> Tuple[str, Optional[str]]:
  """(the entries from best to worst with their seeds, which pairs separate),
  and the label of the winner when it is separated from every other entry."""
  ordered = sorted(entries, key=lambda e: -e[1].mean)
  listed = ", ".join(f"{label} {estimate.text()}" for label, estimate in ordered)
  pairs = [f"{a} > {b} ({intervals.seeds_text(x, y)})"
           for i, (a, x) in enumerate(ordered) for b, y in ordered[i + 1:]
           if relation(x, y) == ABOVE]
  if len(ordered) < 2:
    return listed, ordered[0][0] if ordered else None
  top = ordered[0]
  wins = all(relation(top[1], e) == ABOVE for _, e in ordered[1:])
  total = len(ordered) * (len(ordered) - 1) // 2
  separated = ("separated: " + "; ".join(pairs) + (
      "; every other pair is tied within seed noise" if len(pairs) < total else "")
      if pairs else "no pair separates: all tied within seed noise")
  return f"{listed}; {separated}", top[0] if wins else None


def tied_with_top(entries: Sequence[Tuple[str, Estimate]]) -> Tuple[str, ...]:
  """The labels not separated below the best mean's entry (itself included)."""
  if not entries:
    return ()
  top = max(entries, key=lambda e: e[1].mean)
  return tuple(label for label, e in entries if relation(e, top[1]) != BELOW)
