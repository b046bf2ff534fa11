"""The search rules against numbers worked out by hand: metric sequences, the
learning-rate search (generic scores and lbt.limit's updates to target,
bracketing, ties and their tolerance, coverage, refinement, and decisions
that do not depend on the order trials ran in), and the batch doubling on a
known S(B). Synthetic learning-rate curves: tests/studies/test_search_properties.py;
the B_crit fit: tests/stats/test_limit_fit.py."""

import dataclasses
import math

import numpy as np
import pytest

from lbt.stats import steps_to_target
from lbt.studies import limit_rules, search_rules
from lbt.studies.limit_rules import NOT_REACHED, REACHED, TargetTrial
from lbt.studies.search_rules import DIVERGED, FINISHED

NAN = float("nan")


# --- first_at_target ---------------------------------------------------------

def test_first_at_target_accuracy_unsorted_and_nan():
  # In update order: 100 -> 0.50, 200 -> NaN, 300 -> 0.91, 400 -> 0.95, 500 -> 0.99.
  updates = [500, 300, 100, 400, 200]
  values = [0.99, 0.91, 0.50, 0.95, NAN]
  assert steps_to_target.first_at_target(updates, values, 0.90) == 300
  assert steps_to_target.first_at_target(updates, values, 0.91) == 300  # equal counts
  assert steps_to_target.first_at_target(updates, values, 0.96) == 500
  assert steps_to_target.first_at_target(updates, values, 0.995) is None


def test_first_at_target_loss_and_non_finite():
  # Loss falls 2.0, then a blown-up eval (-inf, then NaN), then 0.4 at 40.
  updates = [40, 10, 30, 20]
  values = [0.4, 2.0, NAN, -math.inf]
  assert steps_to_target.first_at_target(updates, values, 0.5, mode="min") == 40
  assert steps_to_target.first_at_target(updates, values, 2.0, mode="min") == 10
  assert steps_to_target.first_at_target(updates, values, 0.1, mode="min") is None
  # inf never counts as reaching a "max" target either.
  assert steps_to_target.first_at_target([1, 2], [math.inf, 0.2], 0.5) is None


def test_first_at_target_never_and_empty():
  assert steps_to_target.first_at_target([1, 2, 3], [0.1, 0.2, 0.3], 0.9) is None
  assert steps_to_target.first_at_target([], [], 0.9) is None


def test_first_at_target_bad_input():
  with pytest.raises(ValueError, match="mode"):
    steps_to_target.first_at_target([1], [0.5], 0.5, mode="maximum")
  with pytest.raises(ValueError, match="shape"):
    steps_to_target.first_at_target([1, 2], [0.5], 0.5)
  with pytest.raises(ValueError, match="target"):
    steps_to_target.first_at_target([1], [0.5], NAN)


# --- trials and the learning-rate grid ---------------------------------------

GUESS = 0.1
ROOT2 = math.sqrt(2)


def reached(lr, updates):
  return TargetTrial(lr, REACHED, updates_to_target=updates, examples_to_target=updates * 256)


def acc(lr, score, seeds=()):
  """A generic trial, scored by a validation accuracy (higher is better)."""
  return search_rules.Trial(lr, FINISHED, score, seeds)


def test_trials_check_their_fields():
  with pytest.raises(ValueError, match="status"):
    TargetTrial(0.1, "done")
  with pytest.raises(ValueError, match="status"):
    search_rules.Trial(0.1, REACHED)  # lbt.limit's statuses are its own
  with pytest.raises(ValueError, match="updates_to_target"):
    TargetTrial(0.1, REACHED)
  with pytest.raises(ValueError, match="score"):
    search_rules.Trial(0.1, DIVERGED, 100)
  with pytest.raises(ValueError, match="score"):
    TargetTrial(0.1, NOT_REACHED, 0.5)
  with pytest.raises(ValueError, match="score"):
    acc(0.1, NAN)
  with pytest.raises(ValueError, match="seed_scores"):
    search_rules.Trial(0.1, FINISHED, None, (0.5, 0.6))
  with pytest.raises(ValueError, match="score"):  # a reached trial scores -updates
    TargetTrial(0.1, REACHED, 120, updates_to_target=100)
  with pytest.raises(ValueError, match="diverged_at"):
    TargetTrial(0.1, NOT_REACHED, diverged_at=5)
  with pytest.raises(ValueError, match="learning_rate"):
    TargetTrial(0.0, NOT_REACHED)
  with pytest.raises(dataclasses.FrozenInstanceError):
    TargetTrial(0.1, NOT_REACHED).status = REACHED
  assert reached(0.1, 120).score == -120 and reached(0.1, 120).finished
  assert TargetTrial(0.1, NOT_REACHED).score is None and TargetTrial(0.1, NOT_REACHED).finished
  assert not TargetTrial(0.1, DIVERGED).finished


def test_best_trial_is_the_centre_of_the_tied_set():
  trials = [reached(0.2, 300), TargetTrial(0.4, DIVERGED), reached(0.1, 120), reached(0.05, 120),
            TargetTrial(0.025, NOT_REACHED)]
  # {0.05, 0.1} tie; both sqrt(2) from their centre, equal scores: the higher.
  assert search_rules.best_trial(trials) == reached(0.1, 120)
  plateau = [reached(0.025, 120), reached(0.05, 120), reached(0.1, 120)]
  assert search_rules.best_trial(plateau) == reached(0.05, 120)  # tie of three: the middle
  # Nothing beyond either end of the plateau: open on both sides.
  assert search_rules.next_learning_rates(plateau, 0.05) == [0.0125, 0.2]
  assert search_rules.best_trial([TargetTrial(0.1, DIVERGED), TargetTrial(0.05, NOT_REACHED)]) is None
  assert search_rules.best_trial([]) is None
  scores = [acc(0.025, 0.80), acc(0.05, 0.899), acc(0.1, 0.90), acc(0.2, 0.901),
            acc(0.4, 0.85)]
  assert search_rules.best_trial(scores).learning_rate == 0.2
  # Within 0.003 of 0.901: {0.05, 0.1, 0.2}, centred on 0.1.
  assert search_rules.best_trial(scores, tie=0.003).learning_rate == 0.1
  # Within 0.0015: {0.1, 0.2}, equally near their centre: the better-scoring.
  assert search_rules.best_trial(scores, tie=0.0015).learning_rate == 0.2
  scores = [acc(0.025, 0.80), acc(0.05, 0.899), acc(0.1, 0.901), acc(0.2, 0.90)]
  assert search_rules.best_trial(scores, tie=0.0015).learning_rate == 0.1
  # The centre is of the range, in log space: {0.1, 0.2, 0.8} centre 0.283, nearest 0.2.
  gapped = [acc(0.1, 0.9), acc(0.2, 0.9), acc(0.4, 0.5), acc(0.8, 0.9)]
  assert search_rules.best_trial(gapped).learning_rate == 0.2
  with pytest.raises(ValueError, match="tie"):
    search_rules.best_trial(scores, tie=-1)


def test_tie_tolerance_from_the_seeds_or_the_validation_split():
  # No seeds: the binomial standard error of a difference, sqrt(2 p (1 - p) / N).
  assert search_rules.tie_tolerance([acc(0.1, 0.9), acc(0.2, 0.8)], 10000) == pytest.approx(
      math.sqrt(2 * 0.9 * 0.1 / 10000))
  # Three seeds: pooled variance (2 * 0.02^2 + 2 * 0.01^2) / 4 = 0.00025, times
  # 2/3 for a difference of two means of three: 0.0129 (the binomial, 0.0031, is less).
  seeded = [acc(0.1, 0.82, (0.80, 0.82, 0.84)), acc(0.2, 0.71, (0.70, 0.71, 0.72))]
  assert search_rules.tie_tolerance(seeded, 10000) == pytest.approx(
      math.sqrt(0.00025 * 2 / 3))
  # Seeds that agree exactly: the binomial floor of a mean of three, sqrt(2 * 0.09 / 30000).
  agreeing = [acc(0.1, 0.9, (0.9, 0.9, 0.9)), acc(0.2, 0.8, (0.8, 0.8, 0.8))]
  assert search_rules.tie_tolerance(agreeing, 10000) == pytest.approx(
      math.sqrt(2 * 0.09 / 30000))
  assert search_rules.tie_tolerance([acc(0.1, 0.0)], 10000) == search_rules.MIN_TIE
  assert search_rules.tie_tolerance([], 10000) == pytest.approx(math.sqrt(0.5 / 10000))
  with pytest.raises(ValueError, match="validation"):
    search_rules.tie_tolerance([], 0)


def test_first_grid_is_three_points_around_the_guess():
  assert search_rules.next_learning_rates([], GUESS) == [0.05, 0.1, 0.2]


def test_best_at_low_edge_extends_down():
  trials = [reached(0.2, 300), reached(0.05, 100), reached(0.1, 150)]
  assert search_rules.next_learning_rates(trials, GUESS) == [0.025]
  state = search_rules.bracket(trials)
  assert (state.bracketed, state.low, state.high) == (False, None, 0.1)
  assert state.reason == ("not bracketed (best 0.05, tied 0.05-0.05): the tied set reaches "
                          "the lowest LR tried (0.05)")


def test_best_at_top_edge_extends_up_until_a_divergence_closes_it():
  trials = [reached(0.05, 300), reached(0.1, 200), reached(0.2, 100)]
  assert search_rules.next_learning_rates(trials, GUESS) == [0.4]
  assert search_rules.bracket(trials).reason.endswith(
      "the tied set reaches the highest LR tried (0.2)")
  # Closed above by the divergence, below by 0.1; 0.05 is two doublings down.
  closed = trials + [TargetTrial(0.4, DIVERGED)]
  assert search_rules.next_learning_rates(closed, GUESS) == []
  assert search_rules.bracket(closed) == search_rules.Bracket(
      True, "bracketed (best 0.2, tied 0.2-0.2): 0.1 below scores worse by more than the tie; "
      "0.4 above diverged", 0.1, 0.4, 0.2, 0.2,
      "below: 2 doublings; above: 1 doubling, closed by the divergence at 0.4")
  # A slower reach above brackets it too, and the grid goes on to two doublings up.
  assert search_rules.next_learning_rates(trials + [reached(0.4, 180)], GUESS) == [0.8]


def test_a_bracketed_best_is_covered_two_doublings_each_side():
  trials = [reached(0.05, 200), reached(0.1, 100), reached(0.2, 150)]
  state = search_rules.bracket(trials)
  assert (state.bracketed, state.low, state.high) == (True, 0.05, 0.2)
  assert state.coverage == "below: only 1 doubling; above: only 1 doubling"
  assert search_rules.next_learning_rates(trials, GUESS) == [0.025, 0.4]
  covered = trials + [reached(0.025, 400), reached(0.4, 300)]
  assert search_rules.next_learning_rates(covered, GUESS) == []
  assert search_rules.bracket(covered).coverage == "below: 2 doublings; above: 2 doublings"
  # A second peak two doublings up takes over, and the grid follows it.
  second = trials + [reached(0.025, 400), reached(0.4, 80)]
  assert search_rules.best_trial(second).learning_rate == 0.4
  assert search_rules.next_learning_rates(second, GUESS) == [0.8]


def test_nothing_reached():
  not_reached = [TargetTrial(lr, NOT_REACHED) for lr in (0.05, 0.1, 0.2)]
  assert search_rules.next_learning_rates(not_reached, GUESS) == [0.4]
  assert search_rules.bracket(not_reached).reason.startswith("nothing scored")
  all_diverged = [TargetTrial(lr, DIVERGED) for lr in (0.05, 0.1, 0.2)]
  assert search_rules.next_learning_rates(all_diverged, GUESS) == [0.025]
  assert search_rules.bracket(all_diverged).reason.startswith("nothing finished")
  assert search_rules.bracket([]) == search_rules.Bracket(False, "nothing tried", None, None)
  top_diverged = not_reached[:2] + [TargetTrial(0.2, DIVERGED)]
  assert search_rules.next_learning_rates(top_diverged, GUESS) == [0.025]
  # Nothing reached, highest did not diverge, a lower one did: up would pass it, so down.
  trials = [TargetTrial(0.05, NOT_REACHED), TargetTrial(0.1, DIVERGED), TargetTrial(0.2, NOT_REACHED)]
  assert search_rules.next_learning_rates(trials, GUESS) == [0.025]


def test_a_divergence_below_the_best_neither_stops_the_search_above_nor_brackets():
  # The best, 0.2, is the highest: up to 0.4, whatever happened at 0.05.
  trials = [TargetTrial(0.05, DIVERGED), reached(0.1, 200), reached(0.2, 100)]
  assert search_rules.next_learning_rates(trials, GUESS) == [0.4]
  # Best 0.1 with only a divergence one step below: not bracketed; below is
  # taken and ends the coverage there, above the grid goes on to 0.4.
  trials = [TargetTrial(0.05, DIVERGED), reached(0.1, 60), reached(0.2, 100)]
  state = search_rules.bracket(trials)
  assert (state.bracketed, state.low, state.high) == (False, None, 0.2)
  assert state.reason == ("not bracketed (best 0.1, tied 0.1-0.1): only divergences below "
                          "the tied set (nearest 0.05), and a divergence below is not a "
                          "bracket")
  assert search_rules.next_learning_rates(trials, GUESS) == [0.4]
  assert search_rules.next_learning_rates(trials + [reached(0.4, 300)], GUESS) == []
  # Two steps below: the step between is proposed.
  trials = [TargetTrial(0.025, DIVERGED), reached(0.1, 60), reached(0.2, 100)]
  assert search_rules.next_learning_rates(trials, GUESS) == [0.05]
  # A divergence further above closes the top, and the step between is still run.
  trials = [reached(0.05, 300), reached(0.1, 200), reached(0.2, 100), TargetTrial(0.8, DIVERGED)]
  assert search_rules.bracket(trials).bracketed
  assert search_rules.next_learning_rates(trials, GUESS) == [0.4]


def test_a_neighbour_that_only_ties_is_not_a_side():
  trials = [acc(0.05, 0.901), acc(0.1, 0.90), acc(0.2, 0.85)]
  assert search_rules.next_learning_rates(trials, GUESS) == [0.025]
  # Within 0.003, 0.05 and 0.1 tie: the tied set reaches the lowest LR tried.
  state = search_rules.bracket(trials, tie=0.003)
  assert (state.bracketed, state.low, state.high) == (False, None, 0.2)
  assert (state.tied_low, state.tied_high) == (0.05, 0.1)
  assert search_rules.next_learning_rates(trials, GUESS, tie=0.003) == [0.025]
  trials = [acc(0.05, 0.85), acc(0.1, 0.90), acc(0.2, 0.901)]
  assert search_rules.next_learning_rates(trials, GUESS, tie=0.003) == [0.4]
  assert not search_rules.bracket(trials, tie=0.003).bracketed
  # lbt.limit's counts tie exactly: 0.05 and 0.1 both in 100 updates.
  trials = [reached(0.05, 100), reached(0.1, 100), reached(0.2, 150)]
  assert search_rules.next_learning_rates(trials, GUESS) == [0.025]


def test_capped_and_uncapped_trials_decide_the_same():
  # The case: 0.05 stopped at the best count ("not reached") or run on
  # to diverge; either way the best, 0.2, is at the top: 0.4.
  capped = [TargetTrial(0.05, NOT_REACHED), reached(0.1, 100), reached(0.2, 60)]
  uncapped = [TargetTrial(0.05, DIVERGED, diverged_at=80), reached(0.1, 100), reached(0.2, 60)]
  assert search_rules.next_learning_rates(capped, GUESS) == [0.4]
  assert search_rules.next_learning_rates(uncapped, GUESS) == [0.4]
  # Best 0.1 in 60. Uncapped, 0.05 diverged at update 150 and 0.2 reached in
  # 100; capped at 60, both stop unreached. as_capped makes them one input.
  capped = [TargetTrial(0.05, NOT_REACHED), reached(0.1, 60), TargetTrial(0.2, NOT_REACHED)]
  uncapped = [TargetTrial(0.05, DIVERGED, diverged_at=150), reached(0.1, 60), reached(0.2, 100)]
  assert limit_rules.as_capped(uncapped) == capped
  assert limit_rules.as_capped(capped) == capped
  for trials in (capped, limit_rules.as_capped(uncapped)):
    assert search_rules.next_learning_rates(trials, GUESS) == [0.025, 0.4]
    assert search_rules.bracket(trials).bracketed
  # A divergence before the best count is seen by a capped run too: it stays.
  early = [TargetTrial(0.05, DIVERGED, diverged_at=30), reached(0.1, 60), reached(0.2, 100)]
  assert limit_rules.as_capped(early)[0] == early[0]
  assert not search_rules.bracket(limit_rules.as_capped(early)).bracketed
  # Nothing reached: nothing was capped, nothing changes.
  assert limit_rules.as_capped([TargetTrial(0.1, DIVERGED, diverged_at=5)]) == [
      TargetTrial(0.1, DIVERGED, diverged_at=5)]


@pytest.mark.parametrize("seed", range(5))
def test_the_decision_does_not_depend_on_the_order_of_the_trials(seed):
  trials = [reached(0.025, 400), TargetTrial(0.05, DIVERGED), reached(0.1, 120), reached(0.2, 120),
            reached(0.4, 300), TargetTrial(1.6, DIVERGED)]
  expected = (search_rules.next_learning_rates(trials, GUESS, refine=True),
              search_rules.bracket(trials), search_rules.best_trial(trials))
  order = np.random.default_rng(seed).permutation(len(trials))
  shuffled = [trials[i] for i in order]
  assert (search_rules.next_learning_rates(shuffled, GUESS, refine=True),
          search_rules.bracket(shuffled), search_rules.best_trial(shuffled)) == expected
  # Tied 0.1 and 0.2: best 0.2 (equal scores, the higher), closed by 0.025
  # below (the step between diverged, so it stays) and 0.4 above; covered.
  # What is left are the √2 steps.
  assert expected[2] == reached(0.2, 120) and expected[1].bracketed
  assert expected[0] == pytest.approx([0.2 / ROOT2, 0.2 * ROOT2])


def test_refine_proposes_the_root_two_steps_once():
  trials = [acc(0.05, 0.85), acc(0.1, 0.90), acc(0.2, 0.87)]
  assert search_rules.next_learning_rates(trials, GUESS) == [0.025, 0.4]
  covered = trials + [acc(0.025, 0.70), acc(0.4, 0.75)]
  assert search_rules.next_learning_rates(covered, GUESS) == []
  steps = search_rules.next_learning_rates(covered, GUESS, refine=True)
  assert steps == pytest.approx([0.1 / ROOT2, 0.1 * ROOT2])
  # 0.1·√2 is the new best, bracketed by 0.1 and 0.2; 0.4 is 1.5 doublings up: 0.8.
  refined = covered + [acc(0.1 / ROOT2, 0.89), acc(0.1 * ROOT2, 0.91)]
  state = search_rules.bracket(refined)
  assert state.bracketed and (state.low, state.high) == (0.1, 0.2)
  assert search_rules.next_learning_rates(refined, GUESS, refine=True) == [0.8]
  assert search_rules.next_learning_rates(refined + [acc(0.8, 0.6)], GUESS, refine=True) == []
  # Within the cap, one of the two steps: two trials on each side, so above.
  assert search_rules.next_learning_rates(covered, GUESS, refine=True, max_trials=6) == (
      pytest.approx([0.1 * ROOT2]))
  # Never at or above a divergence above the best: 0.2 diverged, 0.1·√2 is below it.
  trials = [acc(0.025, 0.7), acc(0.05, 0.85), acc(0.1, 0.90), search_rules.Trial(0.2, DIVERGED)]
  assert search_rules.next_learning_rates(trials, GUESS, refine=True) == pytest.approx(
      [0.1 / ROOT2, 0.1 * ROOT2])


def test_fill_alternates_sides_nearest_first():
  covered = [acc(lr, 0.9 - 0.05 * math.log2(lr / GUESS) ** 2)
             for lr in (0.025, 0.05, 0.1, 0.2, 0.4)]
  # Two trials each side of the best: above first, then below, then the next above.
  fill = search_rules.next_learning_rates(covered, GUESS, min_trials=8)
  assert fill == pytest.approx([GUESS / ROOT2, GUESS * ROOT2, GUESS * 2 * ROOT2])
  assert search_rules.next_learning_rates(covered, GUESS, min_trials=6) == pytest.approx(
      [GUESS * ROOT2])
  # One more above than below: below first.
  more_above = covered + [acc(0.8, 0.5)]
  assert search_rules.next_learning_rates(more_above, GUESS, min_trials=7) == pytest.approx(
      [GUESS / ROOT2])
  assert search_rules.next_learning_rates(covered, GUESS, min_trials=5) == []


def test_max_trials():
  # Ten trials at 0.1·2^-k, k = 0..9, the best always the lowest.
  trials = [reached(GUESS * 2.0 ** -k, 100 - k) for k in range(10)]
  assert search_rules.next_learning_rates(trials, GUESS) == []
  assert search_rules.bracket(trials, max_trials=10).reason == (
      "trial cap reached (10): not bracketed (best 0.0001953, tied 0.0001953-0.0001953): "
      "the tied set reaches the lowest LR tried (0.0001953)")
  assert search_rules.next_learning_rates(trials, GUESS, max_trials=11) == [GUESS * 2.0 ** -10]
  with pytest.raises(ValueError, match="max_trials"):
    search_rules.next_learning_rates([], GUESS, max_trials=2)
  with pytest.raises(ValueError, match="guess"):
    search_rules.next_learning_rates([], 0.0)


def test_off_grid_trials_snap_back_to_the_grid():
  # 0.15 is between grid points 0.1 and 0.2: the next one up is 0.2, not 0.3.
  trials = [reached(0.05, 300), reached(0.1, 200), reached(0.15, 100)]
  assert search_rules.next_learning_rates(trials, GUESS) == [0.2]
  trials = [reached(0.07, 100), reached(0.1, 200), reached(0.2, 300)]
  assert search_rules.next_learning_rates(trials, GUESS) == [0.05]
  # A gap of two steps below the best: the step in between.
  trials = [reached(0.025, 300), reached(0.1, 100), reached(0.2, 200)]
  assert search_rules.next_learning_rates(trials, GUESS) == [0.05]


def run_search(optimum, diverge_at, guess=GUESS, max_trials=10):
  """Drives the search against a model run: updates grow with the log-distance
  from the optimum LR, runs beyond 64x the optimum do not reach, and runs at
  or above diverge_at diverge."""
  trials = []
  while True:
    proposals = search_rules.next_learning_rates(trials, guess, max_trials=max_trials)
    if not proposals:
      return trials
    for lr in proposals:
      assert all(not math.isclose(lr, t.learning_rate) for t in trials), "re-proposed"
      assert all(lr < t.learning_rate for t in trials if t.status == DIVERGED)
      distance = abs(math.log2(lr / optimum))
      if lr >= diverge_at:
        trials.append(TargetTrial(lr, DIVERGED))
      elif distance > 6:
        trials.append(TargetTrial(lr, NOT_REACHED))
      else:
        trials.append(reached(lr, int(100 * (1 + distance ** 2))))


@pytest.mark.parametrize("optimum,diverge_at,best", [
    (0.1, 10.0, 0.1),          # at the guess: the first three bracket it
    (0.011, 10.0, 0.0125),     # 3 doublings down
    (0.9, 10.0, 0.8),          # 3 doublings up
    (0.9, 0.5, 0.4),           # up, until the divergence at 0.8 closes the top
    (30.0, 0.3, None),         # optimum far above: diverges first, never reaches
])
def test_search_walks_the_grid_to_a_bracket(optimum, diverge_at, best):
  trials = run_search(optimum, diverge_at)
  lrs = sorted(t.learning_rate for t in trials)
  assert all(float(np.log2(lr / GUESS)).is_integer() for lr in lrs)  # on the grid
  assert len(set(lrs)) == len(lrs) <= 10
  found = search_rules.best_trial(trials)
  state = search_rules.bracket(trials, max_trials=10)
  if best is None:
    assert found is None and len(trials) == 10  # ran out of trials
    assert not state.bracketed and state.reason.startswith("trial cap reached (10)")
  else:
    assert found.learning_rate == pytest.approx(best)
    assert lrs[0] < found.learning_rate < lrs[-1]  # bracketed
    assert state.bracketed and state.low < found.learning_rate < state.high
    assert lrs[0] <= best / 4 and (lrs[-1] >= best * 4 or lrs[-1] >= diverge_at)


def test_optimum_beyond_the_cap_is_reported_unbracketed():
  # The optimum 2^9 times the guess: 3 + 7 trials climb, the best still at the top.
  trials = run_search(GUESS * 2 ** 9, 1e9)
  state = search_rules.bracket(trials, max_trials=10)
  assert len(trials) == 10 and search_rules.best_trial(trials).learning_rate == GUESS * 2 ** 8
  assert (state.bracketed, state.low, state.high) == (False, GUESS * 2 ** 7, None)
  assert state.reason.startswith("trial cap reached (10): not bracketed")
  assert state.coverage == "below: 9 doublings; above: only 0 doublings (trial cap reached)"


# --- the batch doubling ------------------------------------------------------

def sweep(s_of_b, start, max_batch, min_gain=limit_rules.MIN_GAIN):
  measured = {}
  while (batch := limit_rules.next_batch(measured, start=start, max_batch=max_batch,
                                         min_gain=min_gain)) is not None:
    measured[batch] = s_of_b(batch)
  return measured


def test_doubling_stops_where_two_doublings_gain_little():
  # S(B) = 100(1 + 1000/B); doubling B cuts S by 1000/(2(B + 1000)):
  #   B=  64: 1662.5 -> 881.25  47.0 %      B=1024: 197.66 -> 148.83  24.7 %
  #   B= 128:  881.25 -> 490.63 44.3 %      B=2048: 148.83 -> 124.41  16.4 %
  #   B= 256:  490.63 -> 295.31 39.8 %      B=4096: 124.41 -> 112.21   9.8 %
  #   B= 512:  295.31 -> 197.66 33.1 %      B=8192: 112.21 -> 106.10   5.4 %
  # The first two successive doublings under 10 % are 4096->8192->16384.
  measured = sweep(lambda b: 100 * (1 + 1000 / b), start=64, max_batch=2 ** 20)
  assert list(measured) == [64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
  assert limit_rules.doubling_stops_at(measured) == 4096


def test_doubling_is_capped_at_max_batch():
  # B_noise far above the range: every doubling pays, so the sweep runs to the
  # training set size, 60,000, measured last.
  measured = sweep(lambda b: 100 * (1 + 1e7 / b), start=64, max_batch=60000)
  assert list(measured) == [64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 60000]
  assert limit_rules.doubling_stops_at(measured) is None
  assert limit_rules.next_batch({64: 10.0}, start=64, max_batch=64) is None


def test_next_batch_stops_when_a_batch_reaches_nothing():
  assert limit_rules.next_batch({}, start=64, max_batch=4096) == 64
  assert limit_rules.next_batch({64: None}, start=64, max_batch=4096) is None
  assert limit_rules.next_batch({64: 1000, 128: 600, 256: None}, start=64, max_batch=4096) is None
  # Measured beyond the None: still done; doubling_stops_at ignores them too.
  after = {64: 1000, 128: 990, 256: None, 512: 980, 1024: 979}
  assert limit_rules.next_batch(after, start=64, max_batch=4096) is None
  assert limit_rules.doubling_stops_at(after) is None


def test_next_batch_counts_only_the_doubling_sequence():
  assert limit_rules.next_batch({64: 1000, 96: 5, 128: 600}, start=64, max_batch=4096) == 256
  # 96 and 192 are off the sequence: their tiny gains do not stop it.
  off = {64: 1000, 96: 999, 128: 600, 192: 599}
  assert limit_rules.next_batch(off, start=64, max_batch=4096) == 256


def test_one_small_gain_does_not_stop():
  s = {64: 1000, 128: 950, 256: 500}  # 5 % then 47 %
  assert limit_rules.next_batch(s, start=64, max_batch=4096) == 512
  assert limit_rules.doubling_stops_at({**s, 512: 480, 1024: 470}) == 256


def test_next_batch_bad_input():
  with pytest.raises(ValueError, match="start"):
    limit_rules.next_batch({}, start=0, max_batch=64)
  with pytest.raises(ValueError, match="max_batch"):
    limit_rules.next_batch({}, start=128, max_batch=64)
  with pytest.raises(ValueError, match="min_gain"):
    limit_rules.next_batch({}, start=64, max_batch=128, min_gain=1.5)
  assert limit_rules.doubling_stops_at({}) is None
