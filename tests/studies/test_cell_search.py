"""lbt.studies.cell_search against searches worked out by hand on a known
validation-accuracy curve (the report reads the choice it records: its own
tests are in tests/reports/test_report.py). Synthetic curves drawn many times:
tests/studies/test_search_properties.py."""

import json
import math

import ml_collections
import pytest

from configs import fashion_mnist
from lbt.errors import ConfigError
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


def cell(label: str, anchor=None, updates=100, **search) -> cell_search.Cell:
  role = {"section": "sweep", "cell": label, "optimizer": "momentum", "batch": 128}
  return cell_search.Cell(label, config(), role, cell_search.Search(anchor=anchor, **search),
                          updates)


def seed_offset(planned) -> float:
  """A seed's shift of the curve: seeds 0, 1, 2 score -1, 0, +1 points."""
  return 0.01 * (planned.seed - 1)


def run_to_the_end(cells, curve=accuracy, order=lambda wave: wave, noise=seed_offset):
  """Plans and 'trains' wave after wave; returns the choices and every trial run."""
  done, ran = {}, []
  for _ in range(100):
    chosen, wave = cell_search.plan(cells, done.get)
    if not wave:
      return chosen, ran
    for planned in order(list(wave)):
      lr = planned.learning_rate
      ran.append(planned.name)
      done[planned.name] = (
          search_rules.Trial(lr, search_rules.DIVERGED) if lr > DIVERGES_ABOVE
          else search_rules.Trial(lr, search_rules.FINISHED, curve(lr) + noise(planned)))
  raise AssertionError("the search did not end")


def test_the_search_finds_the_peak_brackets_it_covers_it_and_refines_once():
  # 0.05, 0.1, 0.2 (best at the top edge) -> 0.4 -> 0.8 (0.4 bracketed by
  # 0.85 on both sides) -> 1.6 (two doublings up; 0.1 is two down) -> √2
  # steps 0.283 and 0.566, both below 0.9: 8 trials, the cap. Then seeds 1
  # and 2 rerun 0.4: three runs at the chosen rate.
  chosen, ran = run_to_the_end([cell("a")], noise=lambda planned: 0.0)
  choice = chosen["a"]
  assert choice.best.learning_rate == pytest.approx(PEAK)
  assert choice.bracket.bracketed and not choice.capped
  assert (choice.bracket.tied_low, choice.bracket.tied_high) == (PEAK, PEAK)
  tried = sorted(t.learning_rate for t in choice.trials)
  assert tried == pytest.approx([0.05, 0.1, 0.2, PEAK / math.sqrt(2), 0.4,
                                 PEAK * math.sqrt(2), 0.8, 1.6])
  assert len(ran) == len(set(ran)) == 10 and ran[-2:] == ["a-seed1", "a-seed2"]
  assert choice.chosen_runs == ("a-lr0.4", "a-seed1", "a-seed2")
  # No seeds per rate: the binomial standard error of a difference at 0.9.
  assert choice.tie == pytest.approx(math.sqrt(2 * 0.9 * 0.1 / 10000))


def test_the_order_trials_finish_in_does_not_change_the_choice():
  forward, _ = run_to_the_end([cell("a")])
  backward, _ = run_to_the_end([cell("a")], order=lambda wave: wave[::-1])
  assert forward["a"] == backward["a"]


def test_an_anchored_cell_starts_around_its_anchor_best():
  chosen, ran = run_to_the_end([cell("b", anchor="a"), cell("a")])
  first_of_b = [n for n in ran if n.startswith("b-")][:3]
  assert first_of_b == [cell_search.trial_name("b", lr) for lr in (0.2, 0.4, 0.8)]
  assert first_of_b == ["b-lr0.2", "b-lr0.4", "b-lr0.8"]
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
  chosen, ran = run_to_the_end([cell("a", seeds=(5,))])
  assert ran[-3:] == ["a-seed1", "a-seed2", "a-seed5"]
  assert chosen["a"].chosen_runs == ("a-lr0.4", "a-seed1", "a-seed2", "a-seed5")
  chosen, ran = run_to_the_end([cell("a", runs=1)])
  assert chosen["a"].chosen_runs == ("a-lr0.4",) and not any("seed" in n for n in ran)
  planned = cell_search.Planned("a-seed1", cell("a"), PEAK, 1, rerun=True)
  config_, role = planned.point()
  assert config_.seed == 1 and config_.optimizer.learning_rate == PEAK
  assert role["section"] == "seed" and role["of"] == "a" and role["cell"] == "a/seed1"


def test_a_cell_of_few_updates_scores_each_rate_by_the_mean_of_its_seeds():
  """20 updates: three seeds per rate, scored -1, 0, +1 points about the
  curve, so each rate's mean is the curve; the same search as one seed, the
  chosen rate's own seeds are its three runs, and the tie is the seeds'."""
  chosen, ran = run_to_the_end([cell("a", updates=cell_search.FEW_UPDATES)])
  choice = chosen["a"]
  assert choice.best.learning_rate == pytest.approx(PEAK)
  assert len(ran) == 3 * 8 and not any(n.startswith("a-seed") for n in ran)
  assert ran[:3] == ["a-lr0.05", "a-lr0.05-seed1", "a-lr0.05-seed2"]
  assert choice.chosen_runs == ("a-lr0.4", "a-lr0.4-seed1", "a-lr0.4-seed2")
  best = choice.best
  assert best.score == pytest.approx(0.9) and best.seed_scores == pytest.approx(
      (0.89, 0.9, 0.91))
  # Pooled seed deviation 0.01 (every rate: -1, 0, +1 points), times √(2/3).
  assert choice.tie == pytest.approx(0.01 * math.sqrt(2 / 3))
  planned = cell_search.Planned("a-lr0.4-seed2", cell("a"), PEAK, 2)
  config_, role = planned.point()
  assert config_.seed == 2 and role == {"section": "sweep", "cell": "a", "optimizer": "momentum",
                                        "batch": 128, "learning_rate": PEAK, "seed": 2}
  # 21 updates: one seed per rate.
  assert cell("b", updates=cell_search.FEW_UPDATES + 1).seeds_per_rate == 1


def test_a_rate_that_diverges_on_one_seed_is_diverged():
  """Seed 2 diverges above 1.0: 1.6 is then a divergence (closing the top),
  0.8 is not."""
  done = {}
  for _ in range(30):
    chosen, wave = cell_search.plan([cell("a", updates=5)], done.get)
    for p in wave:
      diverged = p.learning_rate > 1.0 and p.seed == 2
      done[p.name] = (search_rules.Trial(p.learning_rate, search_rules.DIVERGED) if diverged
                      else search_rules.Trial(p.learning_rate, search_rules.FINISHED,
                                              accuracy(p.learning_rate)))
  statuses = {round(t.learning_rate, 3): t.status for t in chosen["a"].trials}
  assert statuses[1.6] == search_rules.DIVERGED and statuses[0.8] == search_rules.FINISHED
  assert chosen["a"].best.learning_rate == pytest.approx(PEAK)


def test_the_choice_round_trips_through_its_record():
  chosen, _ = run_to_the_end([cell("a", updates=10)])
  record = json.loads(json.dumps(chosen["a"].to_record()))
  assert cell_search.Choice.from_record(record) == chosen["a"]
  assert record["learning_rate"] == pytest.approx(PEAK) and record["bracketed"] is True
  assert (record["tied_low"], record["tied_high"]) == (PEAK, PEAK)
  assert record["chosen_runs"] == ["a-lr0.4", "a-lr0.4-seed1", "a-lr0.4-seed2"]
  by_rate = {round(t["learning_rate"], 3): t for t in record["trials"]}
  assert by_rate[0.8]["runs"] == ["a-lr0.8", "a-lr0.8-seed1", "a-lr0.8-seed2"]
  assert by_rate[0.8]["score"] == pytest.approx(0.85) and by_rate[0.8]["status"] == "finished"
  assert "grid past the best: below: 3 doublings; above: 2 doublings" in record["reason"]


def test_a_capped_cell_says_so():
  """The optimum 2^6 above the guess with 5 trials: 0.05 ... 0.8, best at the top."""
  chosen, _ = run_to_the_end([cell("a", max_trials=5)], curve=lambda lr: accuracy(lr / 16))
  choice = chosen["a"]
  assert choice.capped and not choice.bracket.bracketed
  assert choice.best.learning_rate == pytest.approx(0.8)
  assert choice.reason.startswith("trial cap reached (5): not bracketed")
  assert choice.to_record()["capped"] is True


def test_bad_searches_are_refused_naming_the_field():
  for field, value in (("max_trials", 2), ("runs", 0), ("seeds_per_rate", 0), ("trials", -1)):
    with pytest.raises(ConfigError, match=f"Search.{field}"):
      cell_search.Search(**{field: value})
  with pytest.raises(ConfigError, match="Search.seeds"):
    cell_search.Search(seeds=(-1,))


def test_a_cell_counts_its_updates_from_its_config():
  """The whole 50,000-example training split (60,000 less the 10,000
  validation examples) in one batch for 3 epochs: 3 updates."""
  config_ = fashion_mnist.get_config("momentum,batch=50000,epochs=3,model=mlp")
  config_.dataset.validation_examples = 10000
  config_.eval_batch_size = 5000
  role = {"section": "sweep", "cell": "a", "optimizer": "momentum", "batch": 50000}
  few = cell_search.Cell("a", config_, role, cell_search.Search())
  assert few.updates == 3 and few.seeds_per_rate == 3


def test_an_unknown_anchor_is_refused():
  with pytest.raises(ValueError, match="anchor"):
    cell_search.plan([cell("a", anchor="nowhere")], {}.get)


def test_a_cell_is_filled_to_its_trial_count_with_steps_around_the_best():
  """Bracketed and covered after 0.05 ... 1.6 (6 trials) without refinement;
  `trials=7` adds the √2 step nearest the best on the side with fewer trials
  (three below, two above): 0.4·√2; `trials=8` both sides, above first."""
  chosen, _ = run_to_the_end([cell("a", refine=False, trials=7)])
  tried = sorted(t.learning_rate for t in chosen["a"].trials)
  assert tried == pytest.approx([0.05, 0.1, 0.2, 0.4, PEAK * math.sqrt(2), 0.8, 1.6])
  assert chosen["a"].best.learning_rate == pytest.approx(PEAK)
  chosen, _ = run_to_the_end([cell("a", refine=False, trials=8)])
  tried = sorted(t.learning_rate for t in chosen["a"].trials)
  assert tried == pytest.approx([0.05, 0.1, 0.2, PEAK / math.sqrt(2), 0.4,
                                 PEAK * math.sqrt(2), 0.8, 1.6])


def test_the_expected_runs_count_seeds_per_rate_and_reruns():
  """8 rates at most: one seed each and two reruns (10), or three seeds each
  and none (24), as the searches above ran."""
  assert cell_search.expected_trials([cell("a"), cell("b", updates=10)]) == {"a": 10, "b": 24}


def test_a_cells_runs_are_told_from_a_longer_labels():
  assert cell_search.is_trial_of("m-b2048", "m-b2048-lr0.1")
  assert cell_search.is_trial_of("m-b2048", "m-b2048-lr0.000353553-seed2")
  assert cell_search.is_trial_of("m-b2048", "m-b2048-lr1e-05")
  assert cell_search.is_trial_of("m-b2048", "m-b2048-seed1")
  assert not cell_search.is_trial_of("m-b2048", "m-b2048-sqrt-lr0.1")
  assert not cell_search.is_trial_of("m-b2048", "m-b2048-sqrt-seed1")
  assert not cell_search.is_trial_of("m-b2048", "m-b2048")


def test_the_runs_left_fall_to_none_as_the_searches_end():
  """Before any run, every cell expects expected_trials; at the end none; in
  between never fewer than what is planned now."""
  cells = [cell("a"), cell("a-b", updates=10)]
  done = {}
  first = None
  for _ in range(100):
    chosen, wave = cell_search.plan(cells, done.get)
    left = cell_search.runs_left(cells, chosen, wave, list(done))
    first = first or left
    for c in cells:
      assert left[c.label] >= sum(p.cell is c for p in wave)
    if not wave:
      break
    for planned in wave:
      done[planned.name] = search_rules.Trial(
          planned.learning_rate, search_rules.FINISHED,
          accuracy(planned.learning_rate) + seed_offset(planned))
  assert first == {"a": 10, "a-b": 24}
  assert left == {"a": 0, "a-b": 0}
