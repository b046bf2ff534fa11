"""lbt.studies.cell_search against searches worked out by hand on a known
validation-accuracy curve, and the report's choice against a test set that
would choose differently."""

import math

import ml_collections
import pytest

from lbt.reports import tuned_sections
from lbt.studies import cell_search, search_rules

PEAK = 0.4  # the base LR of the curve's best validation accuracy
DIVERGES_ABOVE = 3.0


def accuracy(lr: float) -> float:
  """0.9 at PEAK, 5 points lower per doubling squared (0.85 at PEAK·2^±1)."""
  return 0.9 - 0.05 * math.log2(lr / PEAK) ** 2


def config(lr: float = 0.1, optimizer: str = "momentum", batch: int = 128):
  return ml_collections.ConfigDict({
      "seed": 0, "batch_size": batch, "dataset": {"validation_examples": 10000},
      "optimizer": {"name": optimizer, "learning_rate": lr, "scaling": "linear",
                    "base_batch_size": 256}})


def cell(label: str, anchor=None, **search) -> cell_search.Cell:
  role = {"section": "sweep", "cell": label, "optimizer": "momentum", "batch": 128}
  return cell_search.Cell(label, config(), role, cell_search.Search(anchor=anchor, **search))


def run_to_the_end(cells, curve=accuracy, order=lambda wave: wave):
  """Plans and 'trains' wave after wave; returns the choices and every trial run."""
  done, ran = {}, []
  for _ in range(100):
    chosen, wave = cell_search.plan(cells, done.get)
    if not wave:
      return chosen, ran
    for planned in order(list(wave)):
      lr = planned.learning_rate
      ran.append(planned.name)
      done[planned.name] = (search_rules.Trial(lr, search_rules.DIVERGED) if lr > DIVERGES_ABOVE
                            else search_rules.Trial(lr, search_rules.FINISHED, curve(lr)))
  raise AssertionError("the search did not end")


def test_the_search_finds_the_peak_brackets_it_and_refines_once():
  # 0.05, 0.1, 0.2 (best at the top edge) -> 0.4 -> 0.8 (0.4 bracketed by
  # 0.85 on both sides) -> √2 steps 0.283 and 0.566, both below 0.9.
  chosen, ran = run_to_the_end([cell("a")])
  choice = chosen["a"]
  assert choice.best.learning_rate == pytest.approx(PEAK)
  assert choice.bracket.bracketed
  tried = sorted(t.learning_rate for t in choice.trials)
  assert tried == pytest.approx([0.05, 0.1, 0.2, PEAK / math.sqrt(2), 0.4,
                                 PEAK * math.sqrt(2), 0.8])
  assert len(ran) == len(set(ran)) == 7
  assert choice.tie == pytest.approx(math.sqrt(0.9 * 0.1 / 10000))


def test_the_order_trials_finish_in_does_not_change_the_choice():
  forward, _ = run_to_the_end([cell("a")])
  backward, _ = run_to_the_end([cell("a")], order=lambda wave: wave[::-1])
  assert forward["a"] == backward["a"]


def test_an_anchored_cell_starts_around_its_anchor_best():
  chosen, ran = run_to_the_end([cell("b", anchor="a"), cell("a")])
  first_of_b = [n for n in ran if n.startswith("b-")][:3]
  assert first_of_b == [cell_search.trial_name("b", lr) for lr in (0.2, 0.4, 0.8)]
  assert chosen["b"].best.learning_rate == pytest.approx(PEAK)


def test_a_kill_mid_search_resumes_to_the_same_choice():
  """A wave half run (the rest 'killed') replans the missing trials only."""
  uninterrupted, _ = run_to_the_end([cell("a")])
  done = {}
  _, wave = cell_search.plan([cell("a")], done.get)
  first = wave[0]
  done[first.name] = search_rules.Trial(first.learning_rate, search_rules.FINISHED,
                                        accuracy(first.learning_rate))
  _, again = cell_search.plan([cell("a")], done.get)
  assert [p.name for p in again] == [p.name for p in wave[1:]]
  assert run_to_the_end([cell("a")])[0]["a"] == uninterrupted["a"]


def test_seeds_rerun_the_chosen_learning_rate_as_cells_of_their_own():
  chosen, ran = run_to_the_end([cell("a", seeds=(1, 2))])
  assert ran[-2:] == ["a-seed1", "a-seed2"]
  planned = cell_search.Planned("a-seed1", cell("a"), PEAK, 1)
  config_, role = planned.point()
  assert config_.seed == 1 and config_.optimizer.learning_rate == PEAK
  assert role["section"] == "seed" and role["of"] == "a" and role["cell"] == "a/seed1"


def test_an_unknown_anchor_is_refused():
  with pytest.raises(ValueError, match="anchor"):
    cell_search.plan([cell("a", anchor="nowhere")], {}.get)


def test_the_report_chooses_by_validation_never_by_test():
  """Three trials; the test set would pick 0.1, the validation split picks 0.4."""
  def row(lr, validation, test):
    return {"cell": "momentum-b128", "section": "sweep", "optimizer": "momentum",
            "batch_size": 128, "learning_rate": lr, "status": "finished",
            "validation_accuracy": validation, "final_accuracy": test,
            "validation_examples": 10000, "effective_learning_rate": lr / 2, "updates": 10}
  rows = [row(0.1, 0.80, 0.95), row(0.2, 0.85, 0.80), row(0.4, 0.90, 0.81),
          row(0.8, 0.85, 0.80)]
  tuned = tuned_sections.tuned_cells(rows)["momentum-b128"]
  assert tuned.best["learning_rate"] == 0.4 and tuned.best["final_accuracy"] == 0.81
  assert tuned.bracketed and tuned.accuracy_text() == "81.00"


def test_an_unbracketed_cell_is_flagged_with_its_reason():
  rows = [{"cell": "c", "section": "sweep", "optimizer": "adam", "batch_size": 128,
           "learning_rate": lr, "status": "finished", "validation_accuracy": acc,
           "final_accuracy": acc, "validation_examples": 10000,
           "effective_learning_rate": lr, "updates": 10}
          for lr, acc in ((0.1, 0.80), (0.2, 0.85), (0.4, 0.90))]
  tuned = tuned_sections.tuned_cells(rows)["c"]
  assert not tuned.bracketed
  assert tuned.accuracy_text().endswith(tuned_sections.UNBRACKETED)
  assert "c:" in tuned_sections.bracket_note([tuned])


def test_a_cell_is_filled_to_its_trial_count_with_steps_around_the_best():
  """Bracketed after 0.05 ... 0.8 (5 trials) without refinement; `trials=7`
  adds √2 steps nearest the best, below first: 0.4/√2, then 0.4·√2."""
  chosen, _ = run_to_the_end([cell("a", refine=False, trials=7)])
  tried = sorted(t.learning_rate for t in chosen["a"].trials)
  assert tried == pytest.approx([0.05, 0.1, 0.2, PEAK / math.sqrt(2), 0.4,
                                 PEAK * math.sqrt(2), 0.8])
  assert chosen["a"].best.learning_rate == pytest.approx(PEAK)


def test_the_rule_verdict_says_where_the_optimum_stops_and_falls():
  plateau = [(128, 0.05, 0, 0), (512, 0.283, 0, 0), (2048, 0.283, 0, 0), (8192, 0.305, 0, 0)]
  assert "stops growing at B=512" in tuned_sections.rule_verdict(plateau)
  surge = [(128, 0.004, 0, 0), (512, 0.016, 0, 0), (2048, 0.032, 0, 0), (8192, 0.016, 0, 0)]
  text = tuned_sections.rule_verdict(surge)
  assert "stops growing at B=2,048" in text and "surge" in text
  assert "linear rule within ×1.4 up to B=512" in text  # 0.016 = 0.004 x 512/128
  linear = [(b, 0.1 * b / 128, 0, 0) for b in (128, 256, 512)]
  assert "still grows" in tuned_sections.rule_verdict(linear)
