"""The study's progress line: the ETA's cost model against hand-derived least
squares, and the ETA from planners' work left, shared by trials at once."""

import pytest

from lbt.studies import runner


def test_the_cost_model_recovers_a_line_and_stays_non_negative():
  # seconds = 1 + 0.002 * examples, exactly.
  samples = [(1000.0, 3.0), (3000.0, 7.0), (500.0, 2.0)]
  assert runner.cost_model(samples) == pytest.approx((1.0, 0.002))
  # Least squares would give a = -1, b = 0.002: the line goes through the
  # origin instead, b = sum(x y) / sum(x x).
  samples = [(1000.0, 1.0), (2000.0, 3.0)]
  assert runner.cost_model(samples) == pytest.approx(
      (0.0, (1000 * 1 + 2000 * 3) / (1000 ** 2 + 2000 ** 2)))
  # Longer trials that ran faster (b < 0) give the mean alone; so do equal sizes.
  assert runner.cost_model([(1000.0, 4.0), (2000.0, 2.0)]) == pytest.approx((3.0, 0.0))
  assert runner.cost_model([(1000.0, 4.0), (1000.0, 2.0)]) == pytest.approx((3.0, 0.0))


class Planned(runner.Planner):
  def __init__(self, found):
    self.found = found

  def plan(self):
    return []

  def progress(self):
    return self.found


def test_the_eta_weighs_the_work_left_and_shares_it(capsys):
  # 12 trials left (20,000 examples); two end here (1 + 0.002 x seconds):
  # 10 left with 16,000 examples, 10 * 1 + 0.002 * 16,000 = 42 s, shared
  # by the trials at once.
  for at_once, seconds in ((1, 42), (2, 21)):
    planners = [Planned(runner.WorkCount(2, 12, 16000.0)), Planned(runner.WorkCount(0, 2, 4000.0))]
    progress = runner.StudyProgress(planners, at_once, "lbt.study")
    progress.wave(1, 3, 3)
    assert "2 of about 14 trials ended; ETA after the first trial" in capsys.readouterr().out
    progress.ended(planners[0], 3.0, 1000.0)
    progress.ended(planners[0], 7.0, 3000.0)
    eta = f"ETA {int(seconds // 60)} min {int(seconds % 60):02d} s"
    progress.starting(runner.Task("d", "next", None), False, None, 0)
    assert f"[5/~14] next (starting; {eta})" in capsys.readouterr().out
    planners[0].found = runner.WorkCount(4, 12, 12000.0)  # as the planner counts again
    progress.wave(2, 3, 3)
    assert f"4 of about 14 trials ended; {eta}" in capsys.readouterr().out
