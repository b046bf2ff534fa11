"""The steps-to-target protocol that `lbt.limit` runs: waves of trials, the
learning-rate and batch searches, and the summary written to limit.json.

The protocol of Shallue et al. 2019 read with McCandlish et al. 2018's model:

1. Each trial trains the config at one batch and one learning rate until the
   validation accuracy (held out from the training set; the test set never
   stops or chooses) first reaches the target, within a budget of
   max(E epochs, U updates) at a constant learning rate after the config's
   warmup; the updates and examples at the crossing are its result, "not
   reached" and "diverged" (a non-finite loss, or a final validation accuracy
   back at chance) are results too.
2. At each batch the learning rates form a grid in powers of two around the
   config's scaling rule's guess (applied to the best learning rate of the
   previous batch; at the first batch, to the config's), extended until the
   best trial is bracketed and the grid reaches two doublings past it on each
   side, then refined once to √2 steps around it: the one rule of every
   search (`lbt.studies.search_rules.next_learning_rates`). S(B) is the best
   trial's updates, and limit.json says for each batch whether its best is
   bracketed (and why not), its tied range, and whether the fit used it. A trial that can no longer beat
   the best finished trial of its batch stops at that trial's count
   (`max_updates`) and says so; every trial is read as if stopped at the
   batch's final best count (`limit_rules.as_capped`), so the order the
   trials ran in (one by one, or side by side with --shard) changes nothing.
3. Batches double from the config's batch until two successive doublings
   each cut S(B) by less than 10 % or the training set is reached
   (`lbt.studies.limit_rules.next_batch`).
4. S(B) = S_min (1 + B_noise/B) is fitted to the measured batches only, with
   a profile-likelihood interval for B_crit
   (`lbt.stats.steps_to_target.fit_limit`), and what the data bound: both
   sides, one, or neither.
5. Every trial runs its one-microbatch batches as two halves
   (noise_scale_split), so B_simple is measured at the best learning rate of
   every batch; their median is consistent with B_crit when it lies inside
   B_crit's interval (`lbt.stats.steps_to_target.inside_interval`).

DIR is a study directory run by the one runner (`lbt.studies.runner`, through
`LimitPlanner`: one workdir per trial, results.sqlite, resumable, `--shard`
splits each wave of trials across hosts, who wait for each other's trials);
it gets `limit.json` when the protocol ends, and `report/limit.md` with the
plots. Rerunning the command resumes and rewrites the same files."""

import json
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np

from lbt.io import layout
from lbt import optim
from lbt.engine import config as config_lib
from lbt.io import faults, files
from lbt.stats import steps_to_target
from lbt.studies import points as points_lib
from lbt.studies import limit_rules, results, runner, search_rules



# A final validation accuracy below this multiple of chance counts as diverged.
CHANCE_FACTOR = 1.5


DEFAULT_VALIDATION_EXAMPLES = 10000


class Protocol:
  """The trials of one config: their configs and names, from its base config;
  batches double from its batch up to `max_batch` (default: the whole
  training split)."""

  def __init__(self, base: ml_collections.ConfigDict, target: float,
               budget_epochs: float, budget_updates: int, max_batch: int = 0):
    self.base, self.target = base, target
    self.budget_epochs, self.budget_updates = budget_epochs, budget_updates
    self.facts = config_lib.validate(base, num_devices=jax.device_count())
    if not 0 <= max_batch <= self.facts.train_examples or (
        max_batch and max_batch < base.batch_size):
      raise ValueError(f"max_batch must be 0 or in [{base.batch_size}, "
                       f"{self.facts.train_examples}], got {max_batch}")
    self.start_batch = base.batch_size
    self.max_batch = max_batch or self.facts.train_examples
    self.num_classes, self.train_examples = self.facts.num_classes, self.facts.train_examples
    self.optimizer = base.optimizer.name

  def guess(self, batch: int, anchor: Optional[Tuple[int, float]] = None) -> float:
    """The config's scaling rule's learning rate at `batch`: from the best
    learning rate measured at the previous batch (`anchor`: batch, LR) when
    there is one, else from the config's own base LR. Anchored, the grid
    follows where the optimum went instead of where the rule alone would put
    it (the linear rule overshoots by orders of magnitude at large batches)."""
    optimizer = ml_collections.ConfigDict(self.base.optimizer.to_dict())
    if anchor is not None:
      optimizer.base_batch_size, optimizer.learning_rate = anchor
    return optim.effective_learning_rate(optimizer, batch)

  def name(self, batch: int, learning_rate: float) -> str:
    """The trial's label (its directory); its role says what it is."""
    return f"{self.optimizer}-b{batch}-target-lr{learning_rate:.6g}"

  def point(self, batch: int, learning_rate: float) -> points_lib.Point:
    """The trial and its role: a trial of the cell of its batch."""
    return points_lib.point(self.trial(batch, learning_rate), "limit", cell=f"b{batch}",
                            learning_rate=float(learning_rate))

  def trial(self, batch: int, learning_rate: float) -> ml_collections.ConfigDict:
    """The base config at `batch` and peak learning rate `learning_rate`
    (scaling none), a constant schedule after its warmup, stopping at the target."""
    config = ml_collections.ConfigDict(self.base.to_dict())
    config.batch_size = batch
    if config.microbatch_size >= batch:
      config.microbatch_size = 0
    config.optimizer.learning_rate, config.optimizer.scaling = learning_rate, "none"
    config.schedule = ml_collections.ConfigDict(
        {"name": "constant", "warmup_epochs": self.base.schedule.get("warmup_epochs", 0.0)})
    steps_per_epoch = config_lib.updates_per_epoch(self.facts.train_examples, batch)
    config.num_epochs = self.budget_epochs
    config.num_train_steps = max(int(round(self.budget_epochs * steps_per_epoch)),
                                 self.budget_updates)
    config.eval_every_steps = 0
    config.noise_scale_split = True
    config.stop_at_target = ml_collections.ConfigDict(
        {"metric": "validation_accuracy", "value": self.target, "every": 0})
    return config


def trial_of(point: results.PointRecords, num_classes: int) -> Optional[limit_rules.TargetTrial]:
  """A finished trial's result from its workdir; None while it runs."""
  lr = point.config["optimizer"]["learning_rate"]
  target = point.last("target")
  if target:
    return limit_rules.TargetTrial(lr, limit_rules.REACHED, updates_to_target=target["step"],
                             examples_to_target=target["examples"])
  if point.last("diverged") or point.status == results.DIVERGED:
    return limit_rules.TargetTrial(lr, search_rules.DIVERGED,
                             diverged_at=point.last("diverged").get("step"))
  summary = point.last("summary")
  if not summary:
    return None
  final = summary.get("validation_accuracy")
  if summary.get("stopped_by") == "end" and final is not None and (
      final < CHANCE_FACTOR / num_classes):
    return limit_rules.TargetTrial(lr, search_rules.DIVERGED,
                             diverged_at=summary.get("num_train_steps"))
  return limit_rules.TargetTrial(lr, limit_rules.NOT_REACHED)


def measured(protocol: Protocol, workdir: str) -> Dict[int, Dict[str, object]]:
  """batch -> trial name -> its result (its learning rate as `_Unfinished`
  while it runs, or when it was killed before its end), for every trial with
  a workdir in the directory whose role is a limit trial of this config's optimizer."""
  by_batch: Dict[int, Dict[str, object]] = {}
  for name in results.point_names(workdir):
    role = points_lib.read_role(os.path.join(workdir, name), name)
    if role["section"] != "limit" or role["optimizer"] != protocol.optimizer:
      continue
    point = results.load_point(workdir, name)
    trial = trial_of(point, protocol.num_classes)
    by_batch.setdefault(point.config["batch_size"], {})[name] = trial or _Unfinished(
        point.config["optimizer"]["learning_rate"])
  return by_batch


class _Unfinished(float):
  """The learning rate of a trial that has a workdir but no result yet."""


def _finished(trials) -> List[limit_rules.TargetTrial]:
  """A batch's ended trials as if each was stopped at the batch's best count
  (`limit_rules.as_capped`): run one by one or side by side (--shard), the
  same trials, so the same search and the same limit.json."""
  return limit_rules.as_capped([t for t in trials.values()
                                if isinstance(t, limit_rules.TargetTrial)])


def next_wave(protocol: Protocol, by_batch) -> List[Tuple[str, int, float]]:
  """The trials to run next, (name, batch, learning rate), guess first; []
  when the protocol is done."""
  best, anchor = {}, None
  batch = protocol.start_batch
  while batch is not None:
    started = by_batch.get(batch, {})
    unfinished = sorted((n, float(t)) for n, t in started.items()
                        if isinstance(t, _Unfinished))
    if unfinished:  # Resumed first: the search goes on as if never interrupted.
      return [(n, batch, lr) for n, lr in unfinished]
    trials = _finished(started)
    guess = protocol.guess(batch, anchor)
    wanted = search_rules.next_learning_rates(trials, guess, refine=True)
    if wanted:
      wanted.sort(key=lambda lr: abs(math.log(lr / guess)))
      return [(protocol.name(batch, lr), batch, lr) for lr in wanted]
    winner = search_rules.best_trial(trials)
    best[batch] = None if winner is None else winner.updates_to_target
    anchor = anchor if winner is None else (batch, winner.learning_rate)
    batch = limit_rules.next_batch(best, start=protocol.start_batch, max_batch=protocol.max_batch)
  return []


class LimitPlanner(runner.Planner):
  """One protocol's trials, in its own directory (a study directory of its
  own: results.sqlite, study.json); limit.json when its work is done. Each
  trial stops at the best count of its batch when it starts (`cap`)."""

  def __init__(self, protocol: Protocol, workdir: str, study_id: Optional[str] = None):
    self.protocol, self.directory = protocol, workdir
    self.study_id, self.target = study_id, protocol.target
    self.summary: Optional[dict] = None

  def plan(self) -> List[runner.Task]:
    wave = next_wave(self.protocol, measured(self.protocol, self.directory))
    return [runner.Task(self.directory, name, self.protocol.point(batch, lr))
            for name, batch, lr in wave]

  def owns(self, task: runner.Task) -> bool:
    return task.directory == self.directory

  def cap(self, task: runner.Task) -> int:
    """The best finished trial's count at the trial's batch, or 0."""
    trials = measured(self.protocol, self.directory).get(task.point.config.batch_size, {})
    best = search_rules.best_trial(_finished(trials))
    return best.updates_to_target if best is not None else 0

  def group(self, task: runner.Task) -> str:
    """A batch's trials run on one shard, one after another: each stops at
    the best count of those before it (`cap`), as when run alone."""
    return f"b{task.point.config.batch_size}"

  def progress(self) -> runner.WorkCount:
    """Trials ended, and those expected: each batch still to search takes the
    mean trial count so far (at least 4), each trial about S(B) updates (a
    trial stops at its batch's best count). S(B) is the best measured at the
    batch, else predicted (`predicted_updates`); the batches still to come are
    those the doubling rule (`limit_rules.next_batch`) measures on the
    predicted counts."""
    by_batch = measured(self.protocol, self.directory) if files.exists(self.directory) else {}
    trials = [t for batch in by_batch.values() for t in batch.values()]
    ended = sum(isinstance(t, limit_rules.TargetTrial) for t in trials)
    per_batch = max(4.0, len(trials) / max(1, len(by_batch)))
    best = {}
    for batch, found in by_batch.items():
      winner = search_rules.best_trial(_finished(found))
      best[batch] = winner.updates_to_target if winner is not None else None
    current = max(by_batch, default=None)
    updates = predicted_updates({b: s for b, s in best.items() if s is not None},
                                self._budget_updates)
    left, chain = {}, {b: s for b, s in best.items() if b != current}
    if current is not None:
      left[current] = max(per_batch - len(by_batch[current]), 0.0) + sum(
          not isinstance(t, limit_rules.TargetTrial) for t in by_batch[current].values())
      chain[current] = best[current] or updates(current)
    batch = self.protocol.start_batch if current is None else limit_rules.next_batch(
        chain, start=self.protocol.start_batch, max_batch=self.protocol.max_batch)
    while batch is not None:
      left[batch], chain[batch] = per_batch, updates(batch)
      batch = limit_rules.next_batch(chain, start=self.protocol.start_batch,
                                     max_batch=self.protocol.max_batch)
    examples = float(sum(n * b * updates(b) for b, n in left.items()))
    return runner.WorkCount(ended, int(round(ended + sum(left.values()))), examples)

  def _budget_updates(self, batch: int) -> int:
    return self.protocol.trial(batch, 1.0).num_train_steps

  def finish(self) -> None:
    self.summary = summarize(self.protocol, self.directory)
    faults.moment("limit")
    files.write_text_atomic(os.path.join(self.directory, layout.LIMIT),
                            json.dumps(self.summary, indent=2, sort_keys=True))


def predicted_updates(reached: Dict[int, float], budget: Callable[[int], float]
                      ) -> Callable[[int], float]:
  """S(B) for the progress line's ETA: the measured value at a measured batch;
  elsewhere S = a + b / B (S_min (1 + B_noise / B)) fitted by least squares to
  the batches measured, when two or more are and a, b > 0; else the last
  measured S; before any, `budget(B)`, the trial's budget."""
  if len(reached) >= 2:
    x = np.array([1.0 / b for b in reached])
    y = np.array(list(reached.values()), dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    if intercept > 0 and slope > 0:
      return lambda batch: reached.get(batch, float(intercept + slope / batch))
  if reached:
    last = reached[max(reached)]
    return lambda batch: reached.get(batch, last)
  return budget


def read_summary(workdir: str) -> Optional[dict]:
  """A protocol's limit.json, or None when it is missing or damaged."""
  try:
    return json.loads(files.read_text(os.path.join(workdir, layout.LIMIT)) or "null")
  except ValueError:
    return None


def summarize(protocol: Protocol, workdir: str) -> dict:
  """limit.json: the measured S(B), the fit with its interval, the regimes
  and the noise scale at the best learning rate of each batch."""
  by_batch = measured(protocol, workdir)
  rows = []
  for batch in sorted(by_batch):
    trials = _finished(by_batch[batch])
    best = search_rules.best_trial(trials)
    bracket = search_rules.bracket(trials, max_trials=search_rules.DEFAULT_MAX_TRIALS)
    rows.append({"batch": batch, "reached": best is not None,
                 "bracketed": bracket.bracketed, "bracket_reason": bracket.reason,
                 "tied_low": bracket.tied_low, "tied_high": bracket.tied_high,
                 "coverage": bracket.coverage, "used_in_fit": best is not None,
                 "best_learning_rate": best.learning_rate if best else None,
                 "updates_to_target": best.updates_to_target if best else None,
                 "examples_to_target": best.examples_to_target if best else None,
                 "trials": len(trials),
                 **_at_target(protocol, workdir, batch, best),
                 "learning_rates": {f"{t.learning_rate:.6g}": t.status if t.status !=
                                    limit_rules.REACHED else t.updates_to_target
                                    for t in sorted(trials, key=lambda t: t.learning_rate)}})
  reached = [r for r in rows if r["reached"]]
  summary = {"config": protocol.optimizer, "target": protocol.target,
             "budget_epochs": protocol.budget_epochs,
             "budget_updates": protocol.budget_updates, "batches": rows,
             "doubling_stops_at": limit_rules.doubling_stops_at(
                 {r["batch"]: r["updates_to_target"] for r in rows})}
  fit = None
  if len(reached) >= 3:
    fit = steps_to_target.fit_limit([r["batch"] for r in reached],
                           [r["updates_to_target"] for r in reached])
  summary.update(fit_fields(fit, rows))
  return summary


def fit_fields(fit: Optional[steps_to_target.LimitFit], rows: Sequence[dict]) -> dict:
  if fit is None:
    return {"b_crit": None, "b_crit_low": None, "b_crit_high": None, "s_min": None,
            "e_min": None, "fit": "fewer than 3 batches reached the target: no fit",
            "bounded": steps_to_target.UNBOUNDED,
            "interval_note": "Fewer than 3 batches reached the target: no fit, no interval."}
  finite = lambda v: v if math.isfinite(v) else None  # JSON has no infinity.
  noise = [r["b_simple"] for r in rows if r["b_simple"] is not None]
  b_simple = float(np.median(noise)) if len(noise) >= 3 else None
  low, high = steps_to_target.regimes(fit.b_crit) if math.isfinite(fit.b_crit) else (None, None)
  return {"b_crit": finite(fit.b_crit), "b_crit_low": finite(fit.b_crit_low),
          "b_crit_high": finite(fit.b_crit_high), "s_min": fit.s_min, "e_min": fit.e_min,
          "level": fit.level, "method": fit.method, "inside_measured_range": fit.inside,
          "bounded": fit.bounded, "interval_note": fit.note,
          "measured_range": [fit.measured_low, fit.measured_high],
          "regimes": {"perfect_scaling_below": low, "maximal_parallelism_above": high},
          "b_simple_median": b_simple,
          "b_simple_inside_interval": (
              None if b_simple is None else steps_to_target.inside_interval(
                  b_simple, finite(fit.b_crit_low), finite(fit.b_crit_high), fit.bounded))}


def _at_target(protocol: Protocol, workdir: str, batch: int,
               best: Optional[limit_rules.TargetTrial]) -> dict:
  """Of a batch's best trial (its workdir read once): B_simple at the update
  it reached the target, and the validation interval its count is exact to."""
  if best is None:
    return {"b_simple": None, "evaluated_every": None}
  point = results.load_point(workdir, protocol.name(batch, best.learning_rate))
  values = [r["b_simple"] for r in point.of_kind("train")
            if isinstance(r.get("b_simple"), float) and math.isfinite(r["b_simple"])
            and r["step"] <= best.updates_to_target]
  return {"b_simple": values[-1] if values else None,
          "evaluated_every": point.last("target").get("every")}
