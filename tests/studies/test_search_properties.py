"""The learning-rate search against known synthetic learning-rate curves: whole
searches driven through `cell_search.plan`, each trial scored from the curve
(with seeded noise where said), and the choice compared with the curve's
true optimum, never with the code's own answer.

Curves are functions of d = log2(lr / optimum), the distance in doublings."""

import math

import ml_collections
import numpy as np
import pytest

from lbt.studies import cell_search, search_rules

OPTIMUM = 0.3
VALIDATION = 10000


def config(guess: float) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "seed": 0, "batch_size": 128, "dataset": {"validation_examples": VALIDATION},
      "optimizer": {"name": "momentum", "learning_rate": guess, "scaling": "linear",
                    "base_batch_size": 256}})


def search(curve, guess, *, updates=100, noise=0.0, rng=None, **fields):
  """One cell searched to its end on `curve` (None: diverged), each run
  scored by the curve plus Gaussian noise of standard deviation `noise`."""
  role = {"section": "sweep", "cell": "a", "optimizer": "momentum", "batch": 128}
  cell = cell_search.Cell("a", config(guess), role,
                          cell_search.Search(max_trials=8, trials=6, **fields), updates)
  done = {}
  for _ in range(50):
    chosen, wave = cell_search.plan([cell], done.get)
    if not wave:
      return chosen["a"]
    for planned in wave:
      value = curve(math.log2(planned.learning_rate / OPTIMUM))
      if value is None:
        done[planned.name] = search_rules.Trial(planned.learning_rate, search_rules.DIVERGED)
        continue
      value += noise * rng.standard_normal() if noise else 0.0
      done[planned.name] = search_rules.Trial(planned.learning_rate, search_rules.FINISHED,
                                              float(value))
  raise AssertionError("the search did not end")


def doublings(lr: float) -> float:
  return math.log2(lr / OPTIMUM)


def at_an_edge(choice) -> bool:
  rates = [t.learning_rate for t in choice.trials]
  return choice.best.learning_rate in (min(rates), max(rates))


def flat_top(d: float) -> float:
  """0.9 from half to twice the optimum, 10 points lower per doubling beyond."""
  return 0.9 - 0.1 * max(abs(d) - 1, 0)


@pytest.mark.parametrize("start", [-2, -1, 0, 1, 2])
def test_a_flat_top_is_chosen_at_its_centre_from_any_start(start):
  """Every grid point from optimum/2 to 2·optimum scores 0.9 and ties, the
  ones beyond score 0.8: the tied range is [optimum/2, 2·optimum] and its
  centre, the optimum, is a grid point, whichever grid point the search
  started from."""
  choice = search(flat_top, OPTIMUM * 2.0 ** start)
  assert choice.best.learning_rate == pytest.approx(OPTIMUM)
  assert (choice.bracket.tied_low, choice.bracket.tied_high) == pytest.approx(
      (OPTIMUM / 2, 2 * OPTIMUM))
  assert choice.bracket.bracketed


@pytest.mark.parametrize("offset", [-0.75, -0.5, -0.25, 0.25, 0.5, 0.75])
def test_a_flat_top_off_the_grid_is_chosen_near_its_centre(offset):
  """Off the grid, the tied range is the tried points within the flat top:
  its ends lie within one 2x step of the top's ends, so its centre within
  half a doubling of the optimum, and the choice within a quarter doubling
  (half a √2 step) of that."""
  choice = search(flat_top, OPTIMUM * 2.0 ** offset)
  assert abs(doublings(choice.best.learning_rate)) <= 0.75 + 1e-9
  assert doublings(choice.bracket.tied_low) >= -1 - 1e-9
  assert doublings(choice.bracket.tied_high) <= 1 + 1e-9
  assert choice.bracket.bracketed


def two_peaks(far: float):
  """A lower peak (0.85) at the optimum's grid point 0 and a higher one (0.9)
  `far` doublings away, each falling 15 points per doubling squared: in
  between (one doubling from each) the curve dips to 0.75."""
  return lambda d: max(0.85 - 0.15 * d ** 2, 0.9 - 0.15 * (d - far) ** 2)


@pytest.mark.parametrize("far", [2, -2])
@pytest.mark.parametrize("updates", [100, cell_search.FEW_UPDATES])
def test_the_higher_peak_four_times_away_is_found(far, updates):
  """Started at the lower peak, the first three trials bracket it (0.70 on
  each side); two doublings of coverage reach the other peak, which wins."""
  choice = search(two_peaks(far), OPTIMUM, updates=updates)
  assert choice.best.learning_rate == pytest.approx(OPTIMUM * 2.0 ** far)
  assert choice.best.score == pytest.approx(0.9)
  assert choice.bracket.bracketed


def quadratic(curvature: float):
  """0.9 at the optimum, `curvature` lower per doubling squared; diverges
  beyond 16 times the optimum."""
  return lambda d: None if d > 4 else 0.9 - curvature * d ** 2


@pytest.mark.parametrize("updates,noise,curvature", [
    (10, 0.01, 0.03),   # three seeds per rate, 1 point of noise per seed
    (100, 0.005, 0.03),  # one seed, half a point
    (100, 0.0, 0.01),  # a wide top where neighbours tie: the grid offset alone
])
def test_the_choice_on_a_noisy_curve_is_unbiased_in_log_space(updates, noise, curvature):
  """300 searches, each from a guess at a random offset (uniform over one
  doubling either way) and with its own noise: the mean error of the chosen
  rate is within ±0.15 doublings of the optimum (the rule this replaced,
  median of the ties and lower rates first, chose 0.2 doublings low on the
  wide top). Whatever each search chose, a best at an edge of its rates is
  not bracketed."""
  rng = np.random.default_rng(0)
  errors = []
  for _ in range(300):
    guess = OPTIMUM * 2.0 ** rng.uniform(-1, 1)
    choice = search(quadratic(curvature), guess, updates=updates, noise=noise, rng=rng)
    errors.append(doublings(choice.best.learning_rate))
    assert not (at_an_edge(choice) and choice.bracket.bracketed)
  assert abs(np.mean(errors)) <= 0.15
  assert np.mean(np.abs(errors)) <= 0.5  # and each near the optimum, not only on average


def random_trials(rng):
  """3 to 8 distinct rates of a √2 grid, a fifth diverged, the others scored
  on a coarse scale (so that scores tie) and a random tie tolerance."""
  grid = 0.1 * np.sqrt(2.0) ** np.arange(12)
  rates = rng.choice(grid, size=rng.integers(3, 9), replace=False)
  trials = [search_rules.Trial(float(lr), search_rules.DIVERGED) if rng.random() < 0.2 else
            search_rules.Trial(float(lr), search_rules.FINISHED, float(rng.integers(0, 5)) / 100)
            for lr in rates]
  return trials, float(rng.choice([0.0, 0.01, 0.02]))


def test_bracketed_means_a_worse_trial_beyond_each_end_of_the_tied_set():
  """On 2,000 random trial sets, against the definition written out here:
  beyond the lowest tied rate a finished trial scoring worse by more than
  the tie, beyond the highest one such a trial or a divergence. A best or a
  tied set at an edge of the rates tried is never bracketed, and a side is
  never a tied trial."""
  rng = np.random.default_rng(1)
  for _ in range(2000):
    trials, tie = random_trials(rng)
    state = search_rules.bracket(trials, tie)
    best = search_rules.best_trial(trials, tie)
    if best is None:
      assert not state.bracketed
      continue
    top = max(t.score for t in trials if t.score is not None)
    tied = [t.learning_rate for t in trials if t.score is not None and t.score >= top - tie]
    low, high = min(tied), max(tied)
    below = any(t.learning_rate < low and t.finished and t.score < top - tie for t in trials)
    above = any(t.learning_rate > high and (not t.finished or t.score < top - tie)
                for t in trials)
    assert state.bracketed == (below and above)
    assert (state.tied_low, state.tied_high) == (low, high)
    rates = [t.learning_rate for t in trials]
    if best.learning_rate in (min(rates), max(rates)) or low == min(rates) or (
        high == max(rates)):
      assert not state.bracketed
    assert state.low is None or state.low < low
    assert state.high is None or state.high > high
    assert low <= best.learning_rate <= high
