"""Means over seeds and their intervals, against numbers derived by hand:
t_{0.975, 2} = 4.303, t_{0.975, 1} = 12.706, t_{0.975, 4} = 2.776 (tables)."""

import math

import pytest

from lbt.stats import intervals


@pytest.mark.parametrize("df,quantile", [(1, 12.706), (2, 4.303), (4, 2.776), (30, 2.042)])
def test_t_quantiles_match_the_tables(df, quantile):
  assert intervals.t_quantile(0.975, df) == pytest.approx(quantile, abs=5e-4)


def test_mean_interval_of_three_seeds():
  """0.80, 0.82, 0.84: mean 0.82, s = 0.02, half-width 4.303 · 0.02/√3 = 0.04969."""
  estimate = intervals.mean_interval([0.80, 0.82, 0.84])
  assert estimate.mean == pytest.approx(0.82)
  assert estimate.n == 3
  half = 4.3027 * 0.02 / math.sqrt(3)
  assert (estimate.low, estimate.high) == pytest.approx((0.82 - half, 0.82 + half), abs=1e-5)
  assert estimate.text() == "82.00 ± 4.97 (3 seeds)"


def test_one_seed_has_no_interval_and_says_so():
  estimate = intervals.mean_interval([0.9])
  assert estimate.mean == 0.9 and not estimate.has_interval
  assert estimate.text() == "90.00 (1 seed, no interval)"
  assert not intervals.separated(estimate, intervals.mean_interval([0.1]))


def test_no_values_and_mismatched_seeds_are_refused():
  with pytest.raises(ValueError, match="at least one"):
    intervals.mean_interval([])
  with pytest.raises(ValueError, match="2 seeds for 3 values"):
    intervals.mean_interval([1, 2, 3], seeds=[0, 1])


def test_two_seeds_use_twelve_point_seven():
  """0.5 and 0.7: mean 0.6, s = 0.1414, half 12.706 · 0.1414/√2 = 1.2706."""
  estimate = intervals.mean_interval([0.5, 0.7])
  assert estimate.high - estimate.mean == pytest.approx(1.2706, abs=1e-3)


def test_a_paired_difference_separates_what_overlapping_intervals_do_not():
  """a = 0.80, 0.85, 0.90 and b = 0.78, 0.83, 0.89 by seed: each alone spans
  ±0.124 and ±0.138, overlapping; the differences 0.02, 0.02, 0.01 have mean
  0.01667, s = 0.005774, half 4.303 · 0.005774/√3 = 0.01434: [0.0023, 0.0310]."""
  a = intervals.mean_interval([0.80, 0.85, 0.90], seeds=[0, 1, 2])
  b = intervals.mean_interval([0.78, 0.83, 0.89], seeds=[0, 1, 2])
  assert a.low < b.high and b.low < a.high
  paired = intervals.paired_difference(a, b)
  assert paired.mean == pytest.approx(0.016667, abs=1e-6)
  assert (paired.low, paired.high) == pytest.approx((0.002323, 0.031010), abs=2e-5)
  assert intervals.separated(a, b) and intervals.order(a, b) == 1
  assert intervals.order(b, a) == -1
  assert intervals.seeds_text(a, b) == "paired over 3 shared seeds"


def test_without_shared_seeds_the_intervals_must_not_overlap():
  low = intervals.mean_interval([0.50, 0.51, 0.52], seeds=[0, 1, 2])   # [0.475, 0.545]
  high = intervals.mean_interval([0.60, 0.61, 0.62], seeds=[3, 4, 5])  # [0.575, 0.645]
  near = intervals.mean_interval([0.53, 0.54, 0.55], seeds=[3, 4, 5])  # [0.505, 0.575]
  assert intervals.paired_difference(low, high) is None
  assert intervals.separated(low, high) and intervals.order(high, low) == 1
  assert not intervals.separated(low, near) and intervals.order(low, near) == 0
  assert intervals.seeds_text(low, near) == "3 against 3 seeds"


def test_a_paired_difference_whose_interval_holds_zero_is_a_tie():
  """Differences +0.02, −0.01, +0.02 by seed: mean 0.01, s = 0.01732, half
  4.303 · 0.01732/√3 = 0.0430, so 0 is inside."""
  a = intervals.from_mapping({0: 0.82, 1: 0.79, 2: 0.82})
  b = intervals.from_mapping({0: 0.80, 1: 0.80, 2: 0.80})
  paired = intervals.paired_difference(a, b)
  assert paired.high - paired.mean == pytest.approx(0.0430, abs=2e-4)
  assert not intervals.separated(a, b)


def test_only_shared_seeds_are_paired():
  a = intervals.from_mapping({0: 0.9, 1: 0.8, 2: 0.85, 7: 0.1})
  b = intervals.from_mapping({0: 0.8, 1: 0.7, 2: 0.75})
  assert intervals.shared_seeds(a, b) == (0, 1, 2)
  paired = intervals.paired_difference(a, b)
  assert paired.n == 3 and paired.mean == pytest.approx(0.1)


def test_shift_moves_the_mean_the_interval_and_every_seed():
  estimate = intervals.shift(intervals.from_mapping({0: 0.80, 1: 0.82, 2: 0.84}), -0.01)
  assert estimate.mean == pytest.approx(0.81)
  assert estimate.high - estimate.mean == pytest.approx(4.3027 * 0.02 / math.sqrt(3), abs=1e-5)
  assert estimate.seeds() == pytest.approx({0: 0.79, 1: 0.81, 2: 0.83})
