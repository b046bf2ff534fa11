"""The report, from a synthetic study whose every number is known: the table of
means over seeds with their intervals, the runner's choice read as written,
every comparison by the interval rule (t_{0.975, 2} = 4.303), the ladder's
gains, Hoffer's test, the diffusion verdict, the Answers, and the ten
sections with non-empty PNGs."""

import math
import os
import re

import pytest

from lbt.io import layout
from lbt.studies import results
from lbt import report
from lbt.reports import study_report, tuned_sections
from study_dirs import finish_study, write_choice, write_point

TARGET = 0.85


HALF3 = 4.3027 / math.sqrt(3)  # the 95% half-width of a mean of 3 per unit of its s
TUNED = "momentum-b1024-tuned"


def seed_role(of, optimizer, batch, seed, rate=0.1):
  """The role of a seed's rerun of `of` at its chosen learning rate."""
  return {"section": "seed", "cell": f"{of}-seed{seed}", "optimizer": optimizer,
          "batch": batch, "of": of, "seed": seed, "learning_rate": rate}


def write_seeds(workdir, of, arg, accuracies, updates, rate=0.1, **kw):
  """Seeds 1, 2, ... of cell `of`, with these final test accuracies."""
  optimizer, batch = arg.split(",")[0], int(arg.split("batch=")[1])
  for seed, accuracy in enumerate(accuracies, 1):
    write_point(workdir, f"{of}-seed{seed}", arg, updates=updates,
                evals=[(updates, accuracy)], role=seed_role(of, optimizer, batch, seed, rate),
                **kw)


def trial_role(cell, optimizer, batch, rate):
  return {"section": "sweep", "cell": cell, "optimizer": optimizer, "batch": batch,
          "learning_rate": rate}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
  """momentum: 90, 91, 92 at 128; 88, 89.5, 90 at 1024 (paired −2, −1.5, −2);
  diverged at 8192. lars: one seed at 128 and 1024; 80, 81, 79 at 8192, where
  adam has 70, 71, 72 (paired +10, +10, +7). A searched cell with its choice
  (LR 0.05: 85, 86, 84) and one whose search has not ended."""
  workdir = str(tmp_path_factory.mktemp("synthetic_study"))
  p = lambda name, arg, **kw: write_point(workdir, name, arg, **kw)
  p("momentum-b128", "momentum,batch=128", updates=100, evals=[(50, 0.80), (100, 0.90)],
    final_distance=10.0)
  write_seeds(workdir, "momentum-b128", "momentum,batch=128", [0.91, 0.92], 100)
  p("momentum-b1024", "momentum,batch=1024", updates=20, evals=[(10, 0.86), (20, 0.88)])
  write_seeds(workdir, "momentum-b1024", "momentum,batch=1024", [0.895, 0.90], 20)
  p("momentum-b8192", "momentum,batch=8192", updates=4, evals=[], diverged_at=2)
  p("lars-b128", "lars,batch=128", updates=100, evals=[(50, 0.86), (100, 0.89)])
  p("lars-b1024", "lars,batch=1024", updates=20, evals=[(20, 0.885)])
  p("lars-b8192", "lars,batch=8192", updates=4, evals=[(4, 0.80)])
  write_seeds(workdir, "lars-b8192", "lars,batch=8192", [0.81, 0.79], 4)
  p("adam-b8192", "adam,batch=8192", updates=4, evals=[(4, 0.70)])
  write_seeds(workdir, "adam-b8192", "adam,batch=8192", [0.71, 0.72], 4)
  # The searched cell: the better validation accuracy goes with the worse test accuracy.
  for rate, validation, test in ((0.05, 0.91, 0.85), (0.1, 0.89, 0.87)):
    p(f"{TUNED}-lr{rate}", "momentum,batch=1024", updates=20, evals=[(20, test)],
      validation=validation, optimizer__learning_rate=rate,
      dataset__validation_examples=10000, role=trial_role(TUNED, "momentum", 1024, rate))
  write_seeds(workdir, TUNED, "momentum,batch=1024", [0.86, 0.84], 20, rate=0.05,
              optimizer__learning_rate=0.05)
  write_choice(workdir, TUNED, learning_rate=0.05, tied_low=0.05, tied_high=0.05,
               bracketed=False, reason="the best is the lowest rate tried",
               trials=[{"learning_rate": 0.05, "status": "finished", "score": 0.91,
                        "runs": [f"{TUNED}-lr0.05"]},
                       {"learning_rate": 0.1, "status": "finished", "score": 0.89,
                        "runs": [f"{TUNED}-lr0.1"]}],
               chosen_runs=[f"{TUNED}-lr0.05", f"{TUNED}-seed1", f"{TUNED}-seed2"])
  p("lars-b1024-tuned-lr0.1", "lars,batch=1024", updates=20, evals=[(20, 0.5)],
    validation=0.5, dataset__validation_examples=10000)
  # The ladder: rung 0 one seed; rungs 1 and 2 three (paired +5, +4, +6).
  p("momentum-b8192-recipe0", "momentum,batch=8192", updates=4, evals=[(4, 0.30)])
  p("lars-b8192-recipe1", "lars,batch=8192", updates=4, evals=[(4, 0.50)])
  write_seeds(workdir, "lars-b8192-recipe1", "lars,batch=8192", [0.52, 0.51], 4)
  p("lars-b8192-recipe2", "lars,batch=8192", updates=4, evals=[(4, 0.55)],
    loss__label_smoothing=0.1)
  write_seeds(workdir, "lars-b8192-recipe2", "lars,batch=8192", [0.56, 0.57], 4,
              loss__label_smoothing=0.1)
  p("momentum-b1024-sqrt", "momentum,batch=1024", updates=20, evals=[(20, 0.885)],
    optimizer__scaling="sqrt")
  p("momentum-b1024-sqrt-gbn", "momentum,batch=1024", updates=20, evals=[(20, 0.89)],
    optimizer__scaling="sqrt", bn__ghost_size=128)
  regime = dict(updates=100, final_distance=10.5, optimizer__scaling="sqrt",
                bn__ghost_size=128, num_epochs=48.0)
  p("momentum-b1024-regime", "momentum,batch=1024", evals=[(100, 0.89)], **regime)
  write_seeds(workdir, "momentum-b1024-regime", "momentum,batch=1024", [0.895, 0.905],
              **regime)
  return workdir, finish_study(workdir, TARGET)


def section(text, number):
  """The text of section `number` (to the next section)."""
  start = text.index(f"## {number}.")
  following = re.search(r"^## ", text[start + 3:], re.MULTILINE)
  return text[start:start + 3 + following.start()] if following else text[start:]


def test_report_has_answers_ten_sections_and_non_empty_pngs(synthetic):
  workdir, text = synthetic
  assert text.index("## Answers") < text.index("## 1.")
  headings = re.findall(r"^## (\d+)\. ", text, re.MULTILINE)
  assert headings == [str(k) for k in range(1, 11)]
  images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
  assert len(images) >= 6
  for image in images:
    assert os.path.getsize(os.path.join(workdir, layout.REPORT, image)) > 1000


def test_the_report_writes_only_under_report_and_the_database(synthetic):
  workdir, _ = synthetic
  before = {p: os.path.getmtime(p) for p in _files(workdir)}
  study_report.build_report(workdir)
  changed = {p for p in _files(workdir) if before.get(p) != os.path.getmtime(p)}
  allowed = (os.path.join(workdir, layout.REPORT) + os.sep,
             os.path.join(workdir, layout.DATABASE))
  assert changed and all(p.startswith(allowed) for p in changed)


def _files(workdir):
  return [os.path.join(d, f) for d, _, names in os.walk(workdir) for f in names]


def test_database_is_rebuilt_from_the_workdirs(synthetic):
  workdir, _ = synthetic
  rows = {r["name"]: r for r in results.read_database(workdir)}
  assert len(rows) == 32
  assert rows["momentum-b8192"]["status"] == "diverged"
  assert rows["momentum-b8192"]["diverged_update"] == 2
  assert rows["momentum-b128"]["updates_to_test_target"] == 100
  assert rows["momentum-b1024"]["examples_to_test_target"] == 10 * 1024
  assert rows[f"{TUNED}-lr0.05"]["validation_accuracy"] == 0.91
  assert rows[f"{TUNED}-seed2"]["seed_of"] == TUNED


def test_the_table_gives_each_cell_its_mean_interval_and_seeds(synthetic):
  """momentum-b128: mean 91, s = 1, half 4.303/√3 = 2.48; at 1024 88, 89.5, 90:
  s = 1.041, half 2.59; the searched cell:
  its choice's runs (85, 86, 84), daggered (its choice is not bracketed)."""
  workdir, text = synthetic
  table = study_report.main_table(workdir)
  assert "| optimizer | 128 | 1024 | 8192 |" in table
  half = f"{HALF3:.2f}"
  assert (f"| momentum | 91.00 ±{half} (n=3) | 89.17 ±2.59 (n=3) | "
          "diverged@2 |") in table
  assert f"| lars | 89.00 | 88.50 | 80.00 ±{half} (n=3) |" in table  # one run: no interval
  assert f"| momentum (LR tuned) |  | 85.00 ±{half} (n=3)† |  |" in table
  assert "| lars (LR tuned) |  | search not finished |  |" in table
  accuracy = section(text, 1)
  assert f"† `{TUNED}`: the best is the lowest rate tried" in accuracy
  assert "`lars-b1024-tuned`: its search has not finished" in accuracy
  assert "Every tuned cell's optimum is bracketed" not in accuracy
  assert f"`{TUNED}`: base LR 0.05 (tied 0.05–0.05) among 0.05 (91.00% val)" in accuracy


def test_the_report_reads_the_choice_and_never_recomputes_it(synthetic, tmp_path):
  """A choice of 0.1 (say, the centre of a tie) is shown though 0.05 scores
  better on validation: the report takes what the runner chose."""
  workdir = str(tmp_path / "study")
  for rate, validation, test in ((0.05, 0.91, 0.85), (0.1, 0.89, 0.87)):
    write_point(workdir if rate == 0.05 else workdir, f"c-lr{rate}", "momentum,batch=1024",
                updates=20, evals=[(20, test)], validation=validation,
                optimizer__learning_rate=rate, role=trial_role("c", "momentum", 1024, rate))
  write_choice(workdir, "c", learning_rate=0.1, tied_low=0.05, tied_high=0.1, bracketed=True,
               reason="bracketed", trials=[], chosen_runs=["c-lr0.1"])
  text = finish_study(workdir, TARGET)
  assert "| momentum (LR tuned) | 87.00 |" in study_report.main_table(workdir)
  assert "Every tuned cell's optimum is bracketed." in section(text, 1)


def test_best_and_reach_follow_the_interval_rule(synthetic):
  """momentum at 1024 against 128, paired: −2, −1.5, −2 (mean −1.83, s 0.289,
  half 0.717): separated; shifted by the 1 point, −0.83 ± 0.72 is still below,
  so not within 1 point. lars has one seed at 128: its means decide reach."""
  _, text = synthetic
  accuracy = section(text, 1)
  assert (f"- **momentum**: best mean 91.00 ± {HALF3:.2f} (3 seeds) at B=128; within 1 "
          "point of it (not separated below best − 1 point) up to B=128; at the largest "
          "batch B=8,192: diverged@2.") in accuracy
  assert "- **lars**: best mean 89.00 (1 seed, no interval) at B=128" in accuracy
  assert "up to B=1,024" in accuracy


def test_the_optimizers_at_the_largest_batch_are_ranked_by_the_intervals(synthetic):
  """lars − adam by seed: +10, +10, +7: mean 9, s 1.73, half 4.30: separated."""
  _, text = synthetic
  assert ("- At B=8,192, from best to worst mean: lars 80.00 ± 2.48 (3 seeds), adam 71.00 "
          "± 2.48 (3 seeds); separated: lars > adam (paired over 3 shared seeds)") in text
  answers = text[text.index("## Answers"):text.index("## 1.")]
  assert "lars wins, 80.00 ± 2.48 (3 seeds), separated from every other optimizer (§1)" in (
      answers)


def test_ladder_gains_say_tie_unless_the_intervals_separate(synthetic):
  """Rung 1 against rung 0 (one seed): a tie; rung 2 against rung 1, paired
  +5, +4, +6: mean 5, s 1, half 2.48: +2.52 to +7.48, above."""
  _, text = synthetic
  ladder = section(text, 4)
  assert re.search(r"\| 1 \| `lars-b8192-recipe1` \| .*optimizer.name: momentum → lars"
                   r".* \| 51.00 ±2.48 \(n=3\) \| \+21.00 points \(3 against 1 seeds\): a tie: "
                   r"one seed on a side", ladder)
  assert ("| 2 | `lars-b8192-recipe2` | loss.label_smoothing: 0.0 → 0.1 |" in ladder)
  assert "+5.00 points (paired over 3 shared seeds: +2.52 to +7.48): above" in ladder
  assert "The ladder moves mean test accuracy from 30.00 (1 seed, no interval)" in ladder


def test_hoffer_gap_is_decided_by_the_paired_seeds(synthetic):
  """Regime − small by seed: −1, −1.5, −1.5 (mean −1.33, s 0.289, half 0.717):
  below, so the gap does not close; gap closed by the means:
  (89.667 − 89.167) / (91 − 89.167) = 27%."""
  _, text = synthetic
  hoffer = section(text, 5)
  assert re.search(r"\| \+ regime adaptation \| 1024 \| .* \| 89.67 ±.* \| 10.5 \| 27% \|",
                   hoffer)
  assert ("the gap does not close (-1.33 points (paired over 3 shared seeds: -2.05 to "
          "-0.62): below)") in hoffer
  answers = text[text.index("## Answers"):text.index("## 1.")]
  assert "regime adaptation** at B=1,024: the gap to B=128 does not close" in answers


def test_diffusion_verdict_from_the_measured_fits(synthetic):
  _, text = synthetic
  diffusion = section(text, 6)
  assert "grows logarithmically at 2 of 2 batch sizes (128, 1024)" in diffusion
  assert "contradicts Hoffer" in diffusion and "the gap does not close" in diffusion
  assert "| `momentum-b128` | 100 | 0.5 |" in diffusion  # The exact log slope.


def test_answers_name_what_was_not_measured(synthetic):
  _, text = synthetic
  answers = text[text.index("## Answers"):text.index("## 1.")]
  assert "**Critical batch**: not measured" in answers
  assert "momentum up to B=128 (best 91.00 ± 2.48 (3 seeds) at B=128)" in answers
  assert "ladder** moves mean test accuracy from 30.00" in answers and "(§4)" in answers


def test_costs_count_the_seeds_behind_each_mean(synthetic):
  _, text = synthetic
  assert "Seeds behind each cell's mean: 1 to 3" in section(text, 10)


def test_report_command(synthetic, capsys, tmp_path):
  workdir, _ = synthetic
  assert report.main(["lbt.report", workdir]) == 0
  assert "| momentum | 91.00 ±" in capsys.readouterr().out
  assert report.main(["lbt.report", str(tmp_path / "missing")]) == 2
  assert "DIR=" in capsys.readouterr().err
  assert report.main(["lbt.report", workdir, f"--include={tmp_path / 'missing'}"]) == 2
  assert "--include=" in capsys.readouterr().err
  assert report.main(["lbt.report", workdir, "--other"]) == 2
  assert "--include=OTHER_DIR" in capsys.readouterr().err


# Optima (batch, effective LR, tied low, tied high) for the rule verdicts of §9.
O = tuned_sections.Optimum


def test_a_rule_holds_where_its_prediction_meets_the_widened_tied_range():
  """Linear from 0.1 at 128: 0.4 at 512 (in 0.25–0.3 widened: 0.177–0.424), 1.6
  at 2048. At 2048 the range
  0.5–1.0 widened by √2 reaches 1.414 < 1.6: the linear rule misses there;
  the square root predicts 0.2 at 512 and 0.4 at 2048, inside 0.354–1.414."""
  points = [O(128, 0.1, 0.1, 0.1), O(512, 0.3, 0.25, 0.3), O(2048, 0.7, 0.5, 1.0)]
  text = tuned_sections.rule_verdict(points)
  assert "linear rule within ×1.4 of the tied ranges up to B=512" in text
  assert "square-root rule up to B=2,048" in text


def test_a_wide_tied_range_keeps_a_rule_that_its_point_would_reject():
  """At 512 the linear rule predicts 0.4; the point 0.2 alone is 2× off, but
  its tied range 0.2–0.3 widened to 0.424 holds 0.4."""
  text = tuned_sections.rule_verdict([O(128, 0.1, 0.1, 0.1), O(512, 0.2, 0.2, 0.3)])
  assert "linear rule within ×1.4 of the tied ranges up to B=512" in text


def test_growth_stops_and_falls_only_by_more_than_a_grid_step_of_the_ranges():
  plateau = [O(128, 0.05, 0.05, 0.05), O(512, 0.28, 0.2, 0.28), O(2048, 0.3, 0.28, 0.4),
             O(8192, 0.3, 0.3, 0.3)]
  text = tuned_sections.rule_verdict(plateau)
  assert "stops growing at B=512 (tied 0.2–0.28)" in text and "surge" not in text
  surge = [O(128, 0.004, 0.004, 0.004), O(512, 0.016, 0.016, 0.016),
           O(2048, 0.032, 0.032, 0.032), O(8192, 0.016, 0.016, 0.016)]
  text = tuned_sections.rule_verdict(surge)
  assert "stops growing at B=2,048" in text and "surge" in text
  # The same fall inside a tied range that reaches back up is no fall.
  flat = surge[:3] + [O(8192, 0.016, 0.016, 0.03)]
  assert "surge" not in tuned_sections.rule_verdict(flat)
  linear = [O(b, 0.1 * b / 128, 0.1 * b / 128, 0.1 * b / 128) for b in (128, 256, 512)]
  assert "still grows" in tuned_sections.rule_verdict(linear)


def test_unbracketed_optima_are_named_in_the_verdict():
  text = tuned_sections.rule_verdict([O(128, 0.1, 0.1, 0.1), O(256, 0.2, 0.2, 0.2, False)])
  assert "unbracketed optima (their true range may reach further) at B=256" in text
