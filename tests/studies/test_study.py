"""The study runner: skip, resume after SIGKILL, divergence as a result, shards,
and results.sqlite rows equal to what each point's metrics.jsonl says."""

import json
import os
import signal
import subprocess
import sys

import pytest

from lbt.io import cli, layout, metrics
from lbt.studies import results
from lbt.studies import directory, runner
from lbt import study
from lbt.errors import ConfigError
from tiny_study import TIMING, load, run_study  # the tiny study: tests/support/tiny_study.py, conftest.py

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rows_without_timing(workdir):
  rows = results.read_database(workdir)
  return {r["name"]: {k: v for k, v in r.items() if k not in TIMING} for r in rows}


def start(study_file, workdir, fault=None):
  """lbt.study on the study; `fault`: the moment it stops at (LBT_FAULT)."""
  env = dict(os.environ, PYTHONPATH=REPO)  # XLA_FLAGS: conftest's 8 devices.
  env.pop("LBT_FAULT", None)
  if fault:
    env["LBT_FAULT"] = fault
  return subprocess.Popen(
      [sys.executable, "-m", "lbt.study", f"--study={study_file}", f"--workdir={workdir}"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_diverging_point_is_recorded_and_the_next_one_runs(uninterrupted):
  workdir, statuses = uninterrupted
  assert statuses == {"momentum-b12000": "finished", "sgd-b6000": "diverged",
                      "lars-b6000": "finished"}
  rows = rows_without_timing(workdir)
  diverged = metrics.read_jsonl(os.path.join(workdir, "sgd-b6000"), "diverged")[-1]
  assert rows["sgd-b6000"]["status"] == "diverged"
  assert rows["sgd-b6000"]["diverged_update"] == diverged["step"] > 1
  assert rows["sgd-b6000"]["diverged_learning_rate"] == diverged["learning_rate"] > 0
  assert rows["lars-b6000"]["status"] == "finished"


def test_rows_equal_each_points_metrics(uninterrupted):
  workdir, _ = uninterrupted
  rows = results.read_database(workdir)
  assert [r["name"] for r in rows] == list(uninterrupted[1])  # The study's order.
  for row in rows:
    records = metrics.read_jsonl(os.path.join(workdir, row["name"]))
    evals = [r for r in records if r["kind"] == "eval"]
    train = [r for r in records if r["kind"] == "train"]
    run = [r for r in records if r["kind"] == "run"][-1]
    assert row["updates"] == run["num_train_steps"]
    assert row["epochs"] == pytest.approx(run["num_train_steps"] / run["steps_per_epoch"])
    assert row["batch_size"] == run["batch_size"]
    assert row["effective_learning_rate"] == run["effective_learning_rate"]
    # The role the study file declared, written before the point trained.
    with open(os.path.join(workdir, row["name"], layout.ROLE)) as f:
      assert json.load(f) == {"section": "sweep", "cell": row["name"],
                              "optimizer": row["optimizer"], "batch": row["batch_size"]}
    assert (row["section"], row["cell"], row["learning_rate"]) == ("sweep", row["name"], None)
    if row["status"] != "finished":
      continue
    summary = [r for r in records if r["kind"] == "summary"][-1]
    assert row["final_accuracy"] == summary["eval_accuracy"] == evals[-1]["accuracy"]
    assert row["best_accuracy"] == max(r["accuracy"] for r in evals)
    assert row["final_train_loss"] == train[-1]["loss"]
    assert row["final_distance"] == train[-1]["distance_from_init"]
    assert row["wall_time_s"] == summary["wall_time_s"]
    reached = [r["step"] for r in evals if r["accuracy"] >= row["test_target_accuracy"]]
    assert row["updates_to_test_target"] == (min(reached) if reached else None)
    assert row["examples_to_test_target"] == (min(reached) * row["batch_size"]
                                         if reached else None)


def test_killed_study_resumes_to_the_same_rows(study_file, uninterrupted, tmp_path):
  workdir = str(tmp_path / "killed")
  victim = os.path.join(workdir, "lars-b6000")
  # Killed once the first two points ended and lars-b6000 is set up, then,
  # running alone, after its update 12 (its last checkpoint is of update 10).
  for fault in ("setup:3", "update:12"):
    process = start(study_file, workdir, fault)
    process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL, fault
  assert results.point_status(victim) == "running"  # Killed mid-way, not finished.
  assert results.point_status(os.path.join(workdir, "momentum-b12000")) == "finished"

  rerun = start(study_file, workdir)
  out, _ = rerun.communicate(timeout=300)
  assert rerun.returncode == 0, out  # A divergence is a result, not a failure.
  # The ended points are not planned again: the wave holds the killed one only.
  assert "wave 1: 1 trial(s), 1 of them this shard's; 2 of about 3 trials ended" in out
  assert "momentum-b12000 (" not in out and "sgd-b6000 (" not in out
  assert "lbt: resumed from the checkpoint of update" in out
  assert "lars-b6000 (resuming" in out
  assert rows_without_timing(workdir) == rows_without_timing(uninterrupted[0])


def test_two_shards_together_give_the_unsharded_rows(study_file, uninterrupted, tmp_path):
  points = load(study_file)
  workdir = str(tmp_path / "sharded")
  shards = [subprocess.Popen(
      [sys.executable, "-m", "lbt.study", f"--study={study_file}", f"--workdir={workdir}",
       f"--shard={i}/2"], cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [shard.communicate(timeout=600)[0] for shard in shards]
  assert [shard.returncode for shard in shards] == [0, 0], outputs
  owners = {n: runner.owner(n, 2) for n in points}
  for i, out in enumerate(outputs):  # Each trial ran in the shard its name gives.
    assert {n for n in points if f"] {n} (starting" in out} == {
        n for n, shard in owners.items() if shard == i}, out
  assert rows_without_timing(workdir) == rows_without_timing(uninterrupted[0])


def test_a_bad_point_stops_the_study_before_any_compute(study_file, tmp_path, capsys):
  bad = tmp_path / "bad_study.py"
  bad.write_text(open(study_file).read() + "\n\ndef get_bad(arg=None):\n"
                 "  points = get_study()\n  points['lars-b6000'].config.batch_size = 70000\n"
                 "  return points\n")
  workdir = tmp_path / "bad"
  points = cli.load_python_file(str(bad), flag="--study", function="get_bad")
  with pytest.raises(ConfigError, match=r"point lars-b6000: batch_size=70000"):
    run_study(points, str(workdir))
  assert not os.path.exists(workdir / "momentum-b12000")
  status = study.main(["lbt.study", f"--study={bad}", f"--workdir={workdir}",
                       "--shard=2/2"])
  err = capsys.readouterr().err.strip()
  assert status == 2 and err == "lbt: error: --shard='2/2' is invalid: I/N with 0 <= I < N, e.g. 0/2"


def test_a_failed_point_is_recorded_the_study_goes_on_and_exits_1(
    study_file, tmp_path, monkeypatch, capsys):
  from lbt.engine import train
  calls = []

  def broken(config, workdir, **kwargs):
    del config, kwargs
    calls.append(os.path.basename(workdir))
    raise RuntimeError("disk on fire")

  monkeypatch.setattr(train, "train_and_evaluate", broken)
  workdir = tmp_path / "failing"
  status = study.main(["lbt.study", f"--study={study_file}", f"--workdir={workdir}",
                       "--only=momentum-*,lars-*"])
  assert status == 1 and calls == ["momentum-b12000", "lars-b6000"]  # Both ran.
  assert "2 trial(s) failed: momentum-b12000, lars-b6000" in capsys.readouterr().err
  rows = rows_without_timing(str(workdir))
  assert rows["lars-b6000"]["status"] == "failed"
  assert rows["lars-b6000"]["error"] == "RuntimeError: disk on fire"


def test_only_and_shard_select_a_deterministic_part():
  names = ["momentum-b128", "momentum-b256", "lars-b128", "lars-b256", "adam-b128"]
  assert directory.select_points(names, ["*-b128"]) == [
      "momentum-b128", "lars-b128", "adam-b128"]
  parts = [[n for n in names if runner.owner(n, 3) == i] for i in range(3)]
  assert sorted(sum(parts, [])) == sorted(names)  # Every trial has exactly one owner.
  assert [runner.owner(n, 3) for n in names] == [runner.owner(n, 3) for n in names]
  assert directory.parse_shard("1/4") == (1, 4)
  with pytest.raises(ConfigError, match="--only='sgd-\\*'"):
    directory.select_points(names, ["sgd-*"])
