"""The report's critical-batch sections on a synthetic study whose numbers are
known: a steps-to-target protocol's limit.json whose S(B) follows
S_min(1 + B_noise/B) exactly, a noise-scale run, and three batch schedules at
equal examples."""

import json
import os

import pytest

from lbt.io import layout
from lbt.reports import limit_report, limit_sections
from lbt.stats import steps_to_target
from lbt.studies import limit_protocol, results
from study_dirs import finish_study, write_point

TARGET = 0.85
S_MIN, B_NOISE = 10, 1000  # updates to target: 90, 50, 30, 20 at B = 125 ... 1000


def write_limit(workdir, label, batches, updates):
  """DIR/limits/<label>/limit.json as the protocol writes it, for S(B) given."""
  rows = [{"batch": b, "reached": True, "bracketed": True, "bracket_reason": "",
           "best_learning_rate": 0.1, "updates_to_target": s, "examples_to_target": s * b,
           "trials": 3, "b_simple": None, "evaluated_every": 1, "learning_rates": {}}
          for b, s in zip(batches, updates)]
  summary = {"config": label, "target": TARGET, "budget_epochs": 10.0, "budget_updates": 300,
             "batches": rows, "doubling_stops_at": None,
             **limit_protocol.fit_fields(steps_to_target.fit_limit(batches, updates), rows)}
  path = os.path.join(workdir, layout.LIMITS, label)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, layout.LIMIT), "w") as f:
    json.dump(summary, f)


def reaching_at(update, updates):
  return [(update, TARGET + 0.01), (updates, TARGET + 0.02)]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("critical_study"))
  write_limit(workdir, "momentum", [125, 250, 500, 1000],
              [round(S_MIN * (1 + B_NOISE / b)) for b in (125, 250, 500, 1000)])
  for batch in (125, 250, 500, 1000):
    to_target = round(S_MIN * (1 + B_NOISE / batch))
    write_point(workdir, f"momentum-b{batch}", f"momentum,batch={batch}", updates=120,
                evals=[(to_target - 1, 0.5)] + reaching_at(to_target, 120))
  # B_simple 1,500 at every update: 1.5x the fitted B_crit.
  write_point(workdir, "momentum-b125-noise", "momentum,batch=125", updates=120,
              evals=reaching_at(90, 120), train_extra=lambda t: {"b_simple": 1500.0},
              noise_scale_split=True)
  # Schedules at equal examples (120 x 250 = 30,000): constant; 60 x 250 then
  # 15 x 1000; the noise scale's 20 x 250 then 25 x 1000.
  batches = {"constant": [250] * 120, "steps": [250] * 60 + [1000] * 15,
             "noise": [250] * 20 + [1000] * 25}
  finals = {"constant": 0.88, "steps": 0.875, "noise": 0.86}
  for name, history in batches.items():
    write_point(workdir, f"momentum-b250-batch-{name}", "momentum,batch=250",
                updates=len(history), evals=reaching_at(len(history) // 2, len(history))[:1]
                + [(len(history), finals[name])],
                train_extra=lambda t, h=history: {"batch_size": h[t - 1]},
                summary_extra={"num_train_steps": len(history), "examples": sum(history)})
  return workdir, finish_study(workdir, TARGET)


def test_the_measured_limit_gives_the_critical_batch_with_its_interval(synthetic):
  _, text = synthetic
  section = text[text.index("## 2."):text.index("## 3.")]
  assert "| momentum | 1000 | " in section and "| two-sided | 10 | 1e+04 |" in section
  assert "B_crit = 1000" in section and "inside the measured range" in section
  assert "fitted to equal-epoch" not in section


def test_b_simple_is_compared_with_b_crit_at_the_target(synthetic):
  _, text = synthetic
  section = text[text.index("## 7."):text.index("## 8.")]
  assert "at update 90, where it reached the target, B_simple = 1.5e+03" in section
  # The exact S(B) still leaves B_crit an interval of about 790-1,300: 1,500
  # lies above it, so not consistent, whatever the ratio of the point estimates.
  assert "Against the B_crit that §2 measured for momentum (1000)" in section
  assert "B_simple is not consistent with B_crit (above its interval" in section


def test_schedules_are_compared_at_equal_examples(synthetic):
  workdir, text = synthetic
  section = text[text.index("## 8."):]
  assert ("| momentum-b250-batch-steps | steps | 250–1000 | 75 | 30000 | 87.50 |"
          in section)
  assert ("| momentum-b250-batch-noise | noise | 250–1000 | 45 | 30000 | 86.00 |"
          in section)
  # One seed each: the differences are stated and called ties, untested.
  assert ("75 updates (0.62× the constant batch's 120), test accuracy against it -0.50 "
          "points (1 against 1 seeds): a tie: one seed on a side") in section
  assert "45 updates (0.38× the constant batch's 120), test accuracy against it -2.00" in (
      section)
  rows = {r["name"]: r for r in results.read_database(workdir)}
  # Update 37 of the steps run is still at 250: 37 x 250 examples to the target.
  assert rows["momentum-b250-batch-steps"]["examples_to_test_target"] == 37 * 250
  # The noise run reached it at update 22: 20 x 250 + 2 x 1000.
  assert rows["momentum-b250-batch-noise"]["examples_to_test_target"] == 20 * 250 + 2 * 1000
  for image in ("noise_scale.png", "batch_schedules.png"):
    assert os.path.getsize(os.path.join(workdir, layout.REPORT, image)) > 1000


@pytest.mark.parametrize("b_simple,fields,words", [
    # The case: S = 100, 90, 95 gives B_crit 12, interval up to 192.
    (150, dict(b_crit=12, b_crit_low=None, b_crit_high=192,
               bounded=steps_to_target.UPPER_ONLY), "is consistent"),
    (150, dict(b_crit=1000, b_crit_low=100, b_crit_high=10000,
               bounded=steps_to_target.TWO_SIDED), "is consistent"),
    (50, dict(b_crit=1000, b_crit_low=100, b_crit_high=10000,
              bounded=steps_to_target.TWO_SIDED), "not consistent with B_crit (below"),
    (1500, dict(b_crit=None, b_crit_low=2000, b_crit_high=None,
                bounded=steps_to_target.LOWER_ONLY), "not consistent with B_crit (below"),
    (1500, dict(b_crit=None, b_crit_low=None, b_crit_high=None,
                bounded=steps_to_target.UNBOUNDED), "cannot be tested")])
def test_b_simple_is_consistent_when_inside_the_interval(b_simple, fields, words):
  assert words in limit_report.consistency(b_simple, fields)


def test_perfect_scaling_bounds_the_critical_batch_from_below_only(tmp_path):
  """800, 380, 200, 97 updates at 128 ... 1024: S falls like 1/B throughout, so
  the data place B_crit above the batches measured and bound it from below."""
  workdir = str(tmp_path)
  write_limit(workdir, "momentum", [128, 256, 512, 1024], [800, 380, 200, 97])
  limits = limit_sections.load_limits(workdir)
  assert limits["momentum"]["b_crit"] is None
  assert limits["momentum"]["bounded"] == "lower only"
  section = limit_sections.section_measured_limit(limits, workdir)
  assert "| momentum | — |" in section and "lower only" in section


def test_an_unbracketed_batch_is_marked_with_whether_the_fit_used_it(tmp_path):
  workdir = str(tmp_path)
  write_limit(workdir, "momentum", [125, 250, 500, 1000], [90, 50, 30, 20])
  path = os.path.join(workdir, layout.LIMITS, "momentum", layout.LIMIT)
  with open(path) as f:
    summary = json.load(f)
  summary["batches"][3].update(bracketed=False, reason="the best is the highest rate tried",
                               used_in_fit=False)
  summary["batches"][2].update(bracketed=False, bracket_reason="trial cap reached")
  with open(path, "w") as f:
    json.dump(summary, f)
  section = limit_sections.section_measured_limit(limit_sections.load_limits(workdir),
                                                  workdir)
  assert ("Optimum not bracketed at B=500 (trial cap reached; whether the fit used it is "
          "not recorded); B=1,000 (the best is the highest rate tried; the fit left it "
          "out).") in section
  assert "B=125 (" not in section
