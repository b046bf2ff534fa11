"""lbt.limit end to end on a tiny MLP: the protocol's waves, its files, and
kills at every moment of the search that the reruns turn into the same answer."""

import json
import math
import os

import numpy as np
import pytest

from lbt.io import layout
from lbt import limit
from configs import fashion_mnist
from lbt.studies import limit_protocol, limit_rules, runner, search_rules
import kill_sweep

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY = """
import ml_collections
from configs import fashion_mnist
VALIDATION_TARGET = 0.7
BUDGET_EPOCHS, BUDGET_UPDATES = 4.0, 40
def get_config(optimizer="momentum"):
  config = fashion_mnist.get_config(optimizer + ",batch=8192,model=mlp")
  config.model.hidden_sizes = (16,)
  config.dataset.data_dir = {data_dir!r}
  config.dataset.validation_examples = 5000
  config.eval_batch_size = 5000
  config.checkpoint_every_steps = 5
  config.schedule = ml_collections.ConfigDict({{"name": "constant", "warmup_epochs": 0.0}})
  return config
"""


@pytest.fixture(scope="module")
def tiny(data_dir, tmp_path_factory):
  path = tmp_path_factory.mktemp("limit_config") / "tiny_limit.py"
  path.write_text(TINY.format(data_dir=data_dir))
  return str(path)


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("limit") / "reference")
  assert limit.main(["lbt.limit", f"--config={tiny}", f"--workdir={workdir}"]) == 0
  with open(os.path.join(workdir, layout.LIMIT)) as f:
    return workdir, json.load(f)


def test_each_batch_is_searched_to_a_bracket_and_the_batches_double(reference):
  _, summary = reference
  batches = [r["batch"] for r in summary["batches"]]
  assert batches[0] == 8192 and all(b == 2 * a or b == 50000
                                    for a, b in zip(batches, batches[1:]))
  for row in summary["batches"]:
    if not row["reached"]:
      continue
    tried = sorted(float(lr) for lr in row["learning_rates"])
    # On the 2x grid, refined to √2 steps around the best (rates kept to 6 digits).
    steps = [2 * np.log2(lr / tried[0]) for lr in tried]
    assert all(abs(k - round(k)) < 1e-4 for k in steps)
    assert_bracket_as_recorded(row)
  best = {r["batch"]: r["updates_to_target"] for r in summary["batches"]}
  stop = limit_rules.next_batch(best, start=8192, max_batch=50000)
  assert stop is None  # The protocol ran until the batch range said it was done.


def assert_bracket_as_recorded(row):
  """The row's bracketed and bracket_reason are the rule's on its trials, and
  by hand: beyond the lowest of the trials tied at the fewest updates, a
  finished one (slower, or not reached), and beyond the highest, any one
  (slower, not reached or diverged); the search ends unbracketed only at the
  trial cap or at a divergence below."""
  outcomes = {float(lr): v for lr, v in row["learning_rates"].items()}
  trials = [limit_rules.TargetTrial(lr, limit_rules.REACHED, updates_to_target=v)
            if isinstance(v, int) else limit_rules.TargetTrial(lr, v) for lr, v in outcomes.items()]
  state = search_rules.bracket(trials, max_trials=search_rules.DEFAULT_MAX_TRIALS)
  assert (row["bracketed"], row["bracket_reason"]) == (state.bracketed, state.reason)
  fewest = min(v for v in outcomes.values() if isinstance(v, int))
  tied = [lr for lr, v in outcomes.items() if v == fewest]
  below = any(v != search_rules.DIVERGED for lr, v in outcomes.items() if lr < min(tied))
  above = any(lr > max(tied) for lr in outcomes)
  assert row["bracketed"] == (below and above)
  assert min(tied) * (1 - 1e-5) <= row["best_learning_rate"] <= max(tied) * (1 + 1e-5)  # 6 digits
  if not row["bracketed"]:
    assert row["trials"] >= 10 or "a divergence below is not a bracket" in row["bracket_reason"]


def test_limit_json_has_the_documented_fields(reference):
  workdir, summary = reference
  for key in ("b_crit", "b_crit_low", "b_crit_high", "s_min", "e_min", "target", "batches"):
    assert key in summary
  assert summary["s_min"] is not None and summary["level"] == 0.9  # a fit, with its interval
  b_crit, low = inf_if_none(summary["b_crit"]), summary["b_crit_low"]
  high = inf_if_none(summary["b_crit_high"])
  assert 0 <= low <= b_crit <= high
  assert summary["bounded"] == {(True, True): "two-sided", (True, False): "lower only",
                                (False, True): "upper only", (False, False): "none"}[
                                    (low > 0, high < math.inf)]
  assert summary["interval_note"].endswith(".")
  for row in summary["batches"]:
    assert {"batch", "best_learning_rate", "updates_to_target", "examples_to_target",
            "reached", "bracketed", "bracket_reason"} <= set(row)
    assert isinstance(row["bracketed"], bool) and row["bracket_reason"]
    if row["reached"]:
      assert row["examples_to_target"] == row["updates_to_target"] * row["batch"]
  with open(os.path.join(workdir, "report", "limit.md")) as f:
    text = f.read()
  assert summary["interval_note"] in text and "best LR bracketed" in text


def inf_if_none(value):
  return math.inf if value is None else value


# S(B) of sweeps whose fit is degenerate: rising over the three batches the
# rule measures before it stops (E_min < 0), and falling faster than 1/B to
# the training set's size (S_min < 0).
DEGENERATE = {"rising": (lambda b: 212 * (b / 8192) ** 0.09, "upper only", "at most"),
              "steeper": (lambda b: 800 * (8192 / b) ** 1.1, "lower only", "at least")}


@pytest.mark.parametrize("case", DEGENERATE)
def test_a_sweep_with_a_degenerate_fit_still_writes_limit_json(tiny, tmp_path, monkeypatch,
                                                              case):
  s_of_b, bounded, words = DEGENERATE[case]

  def measured(protocol, workdir):
    """Each batch bracketed at its guess, two doublings below it covered and
    the √2 steps run: nothing left to search."""
    by_batch, best, anchor = {}, {}, None
    while (batch := limit_rules.next_batch(best, start=protocol.start_batch,
                                            max_batch=protocol.max_batch)):
      guess = protocol.guess(batch, anchor)
      best[batch] = round(s_of_b(batch))
      slow = {f"low{k}": limit_rules.TargetTrial(guess / 2 ** (k / 2), limit_rules.NOT_REACHED)
              for k in (1, 2, 4)}
      by_batch[batch] = {
          **slow,
          "best": limit_rules.TargetTrial(guess, limit_rules.REACHED, updates_to_target=best[batch],
                                    examples_to_target=best[batch] * batch),
          "high1": limit_rules.TargetTrial(guess * 2 ** 0.5, search_rules.DIVERGED),
          "high2": limit_rules.TargetTrial(2 * guess, search_rules.DIVERGED)}
      anchor = (batch, guess)
    return by_batch

  monkeypatch.setattr(limit_protocol, "measured", measured)
  monkeypatch.setattr(limit_protocol, "_at_target",
                      lambda *_: {"b_simple": None, "evaluated_every": 10})
  workdir = str(tmp_path / case)
  os.makedirs(workdir)  # as the trials' waves would have
  assert limit.main(["lbt.limit", f"--config={tiny}", f"--workdir={workdir}"]) == 0
  with open(os.path.join(workdir, layout.LIMIT)) as f:
    summary = json.load(f)
  assert summary["bounded"] == bounded and all(r["bracketed"] for r in summary["batches"])
  if bounded == "upper only":
    assert len(summary["batches"]) == 3 and summary["e_min"] < 0
    assert (summary["b_crit"], summary["b_crit_low"]) == (0.0, 0.0)
  else:
    assert summary["s_min"] < 0 and summary["b_crit"] is None
    assert summary["b_crit_high"] is None and summary["b_crit_low"] > 8192
  with open(os.path.join(workdir, "report", "limit.md")) as f:
    text = f.read()
  assert summary["interval_note"] in text and words in text


class ToyProtocol:
  """What next_wave asks of a protocol, for a model of trials: batches 1024
  to 16384, the linear scaling rule from the previous batch's best."""
  start_batch, max_batch = 1024, 16384

  def guess(self, batch, anchor=None):
    return 0.1 if anchor is None else anchor[1] * batch / anchor[0]

  def name(self, batch, learning_rate):
    return f"b{batch}-lr{learning_rate:.6g}"


def toy_trial(batch, learning_rate, cap):
  """A trial stopped at update `cap` (None: run to its end). The optimum
  grows as the square root of the batch, so the linear rule overshoots;
  more than 1.5 steps above it a run diverges at once, more than 1.5 below
  it much later than any reach, and in between it reaches at a count
  rounded to 10."""
  k = math.log2(learning_rate / (0.2 * (batch / 1024) ** 0.5))
  reach, diverge = None, None
  if k > 1.5:
    diverge = 3
  elif k < -1.5:
    diverge = 5000
  else:
    reach = int(60 * (1 + k * k) * (1 + 2048 / batch)) // 10 * 10
  if diverge is not None and (cap is None or diverge <= cap):
    return limit_rules.TargetTrial(learning_rate, search_rules.DIVERGED, diverged_at=diverge)
  if reach is not None and (cap is None or reach <= cap):
    return limit_rules.TargetTrial(learning_rate, limit_rules.REACHED, updates_to_target=reach,
                             examples_to_target=reach * batch)
  return limit_rules.TargetTrial(learning_rate, limit_rules.NOT_REACHED)


def toy_limit(one_by_one):
  """The protocol's waves on the toy: one by one, each trial capped at its
  batch's best so far (one host); or every wave's trials to their end
  (--shard, where no trial of a wave has ended when the others start).
  Returns the waves, the trials as they ended, and what limit.json records."""
  protocol, by_batch, waves = ToyProtocol(), {}, []
  while (wave := limit_protocol.next_wave(protocol, by_batch)):
    waves.append(wave)
    for name, batch, learning_rate in wave:
      trials = by_batch.setdefault(batch, {})
      best = search_rules.best_trial(limit_protocol._finished(trials))
      cap = best.updates_to_target if one_by_one and best is not None else None
      trials[name] = toy_trial(batch, learning_rate, cap)
  rows = {}
  for batch, trials in by_batch.items():
    finished = limit_protocol._finished(trials)
    best = search_rules.best_trial(finished)
    rows[batch] = (best, search_rules.bracket(finished), sorted(
        finished, key=lambda t: t.learning_rate))
  return waves, by_batch, rows


def test_one_host_and_shards_search_the_same_way_and_record_the_same():
  serial_waves, serial_trials, serial_rows = toy_limit(one_by_one=True)
  shard_waves, shard_trials, shard_rows = toy_limit(one_by_one=False)
  # The runs differ: capped trials ended unreached where, run on, they
  # reached later or diverged late ...
  assert serial_trials != shard_trials
  ended = {(b, n): (serial_trials[b][n].status, shard_trials[b][n].status)
           for b in serial_trials for n in serial_trials[b] if n in shard_trials.get(b, {})}
  assert (limit_rules.NOT_REACHED, search_rules.DIVERGED) in ended.values()
  assert (limit_rules.NOT_REACHED, limit_rules.REACHED) in ended.values()
  # ... and still the same waves, the same best, bracket and rates per batch.
  assert [sorted(w) for w in serial_waves] == [sorted(w) for w in shard_waves]
  assert serial_rows == shard_rows
  assert sorted(serial_rows) == [1024, 2048, 4096, 8192, 16384]
  assert all(state.bracketed for _, state, _ in serial_rows.values())


# Each kill lands in the run the previous one left (a moment's count is per
# process): lbt.limit's own phases, each followed by the rerun the next kill
# stops, the last by one to the end (the runner's every moment, a protocol's
# among them, is swept by tests/studies/test_study_faults.py).
KILLS = (
    "start:1",       # before the flags are read: nothing written yet
    "claim:1",       # the first wave journaled, one trial's config written, the others not
    "ended:1",       # a trial's last update checkpointed, its summary not written
    "point_end:1",   # a trial ended, its row not written
    "limit:1",       # every trial ended, limit.json not written
    "write:1",       # limit.json written beside itself, not renamed
    "report:1",      # limit.md's plots written, limit.md not
)


def test_a_kill_at_every_moment_of_the_protocol_then_a_rerun_gives_the_same_limit(
    tiny, reference, tmp_path):
  """After each kill the runs that ended, ended as uninterrupted ones; the
  last rerun writes the uninterrupted limit.json and limit.md."""
  reference_dir, expected = reference
  workdir = str(tmp_path / "killed")
  command = kill_sweep.python("lbt.limit", f"--config={tiny}", f"--workdir={workdir}")
  kill_sweep.sweep(command, KILLS, str(tmp_path / "moments"), lambda fault:
                   kill_sweep.assert_ended_as(workdir, reference_dir, fault))
  rerun = kill_sweep.run(command)
  assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
  with open(os.path.join(workdir, layout.LIMIT)) as f:
    assert json.load(f) == expected
  kill_sweep.assert_ended_as(workdir, reference_dir, "the last rerun")
  report = lambda d: open(os.path.join(d, layout.REPORT, layout.LIMIT_MD)).read()
  assert report(workdir) == report(reference_dir)


def test_shards_keep_a_batchs_trials_together():
  """Split over shards, a protocol's trials of one batch run on one shard,
  one after another (each stopped at the best count before it); its batches,
  and other work, spread over the shards."""
  config = fashion_mnist.get_config("momentum,batch=128,model=mlp")
  protocol = limit_protocol.Protocol(config, 0.8, 2.0, 40)
  planner = limit_protocol.LimitPlanner(protocol, "/study/limits/momentum")
  batches = [128 * 2 ** k for k in range(8)]
  tasks = {b: [runner.Task(planner.directory, protocol.name(b, lr), protocol.point(b, lr))
               for lr in (0.025, 0.05, 0.1, 0.2, 0.4)] for b in batches}
  shards = {b: {runner.shard_of("/study", t, [planner], 2) for t in ts}
            for b, ts in tasks.items()}
  assert all(len(s) == 1 for s in shards.values())
  assert set.union(*shards.values()) == {0, 1}


def test_the_eta_predicts_s_of_b_from_the_batches_measured():
  budget = lambda batch: 300
  # S = 10 + 20000 / B through (1000, 30) and (2000, 20), by hand.
  predict = limit_protocol.predicted_updates({1000: 30, 2000: 20}, budget)
  assert predict(4000) == pytest.approx(15.0) and predict(1000) == 30
  # One batch, or a count that grew with the batch: the last measured count.
  assert limit_protocol.predicted_updates({1000: 30}, budget)(8000) == 30
  assert limit_protocol.predicted_updates({1000: 20, 2000: 30}, budget)(4000) == 30
  assert limit_protocol.predicted_updates({}, budget)(4000) == 300
