"""A study whose cells search their learning rate (planned by
lbt.studies.cell_search, run by lbt.studies.runner) run from outside: the
validation split chooses, the report flags what is not bracketed, a kill at a
named moment then a rerun, and two shards, each give the table of one
uninterrupted runner; every trial is in TensorBoard's HParams."""

import json
import os
import struct
import subprocess
import sys

import pytest
from tensorboardX.proto import event_pb2


from lbt.io import layout
from lbt.reports import study_report
from lbt.studies import results
from tiny_study import TIMING, load, run_study

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Two cells of a tiny MLP, the second's search anchored on the first's best;
# a plain point beside them runs as in any study.
SEARCHED_STUDY = """
from configs import fashion_mnist
from lbt.studies import cell_search, points as points_lib

def config(optimizer, batch):
  config = fashion_mnist.get_config(f"{{optimizer}},batch={{batch}},model=mlp")
  config.model.hidden_sizes = (16,)
  config.num_train_steps = 6
  config.schedule.warmup_epochs = 0.0
  config.eval_every_steps = 3
  config.eval_batch_size = 5000
  config.dataset.validation_examples = 5000
  config.dataset.data_dir = {data_dir!r}
  return config

def get_study(arg=None):
  # The first cell trains 6 updates: few, so each rate runs two seeds and is
  # scored by their mean; the second runs one seed per rate and reruns its
  # chosen rate once.
  first = cell_search.Search(max_trials=4, refine=False, runs=2, seeds_per_rate=2)
  second = cell_search.Search(anchor="momentum-b2000", max_trials=4, refine=False, runs=2,
                              seeds_per_rate=1)
  return {{
      "plain-b4000": points_lib.point(config("sgd", 4000), "sweep", cell="sgd-b4000"),
      "momentum-b2000": points_lib.point(config("momentum", 2000), "sweep",
                                         cell="momentum-b2000", search=first),
      "momentum-b8000": points_lib.point(config("momentum", 8000), "sweep",
                                         cell="momentum-b8000", search=second),
  }}
"""


@pytest.fixture(scope="module")
def searched_file(data_dir, tmp_path_factory):
  path = tmp_path_factory.mktemp("searched") / "searched_study.py"
  path.write_text(SEARCHED_STUDY.format(data_dir=data_dir))
  return str(path)


@pytest.fixture(scope="module")
def reference(searched_file, tmp_path_factory):
  """The searched study run once, start to end, in-process."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  run_study(load(searched_file), workdir)
  return workdir


def rows_of(workdir):
  return {r["name"]: {k: v for k, v in r.items() if k not in TIMING}
          for r in results.read_database(workdir)}


def run(searched_file, workdir, *flags, env=None):
  return subprocess.Popen(
      [sys.executable, "-m", "lbt.study", f"--study={searched_file}", f"--workdir={workdir}",
       *flags], cwd=REPO, env={**os.environ, **(env or {})},
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def choice_of(workdir, cell):
  with open(os.path.join(workdir, layout.choice_file(cell))) as f:
    return json.load(f)


def test_each_cell_keeps_its_validation_best_trial(reference):
  rows = rows_of(reference)
  for cell, seeds in (("momentum-b2000", 2), ("momentum-b8000", 1)):
    choice = choice_of(reference, cell)
    trials = choice["trials"]
    assert 3 <= len(trials) <= 4
    for trial in trials:  # Each rate's score is the mean validation accuracy of its runs.
      runs = [rows[name] for name in trial["runs"]]
      assert len(runs) == seeds and all(
          r["learning_rate"] == pytest.approx(trial["learning_rate"]) for r in runs)
      assert trial["score"] == pytest.approx(
          sum(r["validation_accuracy"] for r in runs) / seeds)
    best = max(t["score"] for t in trials)
    chosen = next(t for t in trials if t["learning_rate"] == choice["learning_rate"])
    assert chosen["score"] >= best - choice["tie"]  # Never worse than a tie of the best.
    runs = [rows[n] for n in choice["chosen_runs"]]  # The cell's number: its chosen runs.
    assert len(runs) == 2 and all(r["learning_rate"] == pytest.approx(
        choice["learning_rate"]) and r["status"] == "finished" for r in runs)
    assert len({r["seed"] or 0 for r in runs}) == 2  # Two seeds.
  anchor = choice_of(reference, "momentum-b2000")["learning_rate"]
  second = sorted(t["learning_rate"] for t in choice_of(reference, "momentum-b8000")["trials"])
  assert anchor in [pytest.approx(lr) for lr in second]  # The grid started from the anchor.
  table = study_report.main_table(reference)
  assert "momentum" in table and "sgd" in table


def _events(path):
  data, events = open(path, "rb").read(), []
  while data:
    (length,) = struct.unpack("<Q", data[:8])
    events.append(event_pb2.Event.FromString(data[12:12 + length]))
    data = data[12 + length + 4:]
  return events


def test_every_trial_is_in_the_hparams_dashboard(reference):
  trials = [n for n, r in rows_of(reference).items() if r["learning_rate"]]
  for name in trials:
    folder = os.path.join(reference, name, layout.TENSORBOARD, "hparams")
    (events_file,) = os.listdir(folder)
    tags = {v.tag for e in _events(os.path.join(folder, events_file)) for v in e.summary.value}
    assert {"_hparams_/experiment", "_hparams_/session_start_info",
            "hparams/validation_accuracy", "hparams/test_accuracy"} <= tags


def test_a_kill_mid_search_then_a_rerun_gives_the_same_rows(searched_file, reference,
                                                            tmp_path):
  workdir = str(tmp_path / "killed")
  killed = run(searched_file, workdir, env={"LBT_FAULT": "checkpoint:4"})
  out, _ = killed.communicate(timeout=600)
  assert killed.returncode == -9, out
  again = run(searched_file, workdir)
  out, _ = again.communicate(timeout=600)
  assert again.returncode == 0, out
  assert rows_of(workdir) == rows_of(reference)
  assert study_report.main_table(workdir) == study_report.main_table(reference)


def test_two_shards_give_the_rows_of_one_runner(searched_file, reference, tmp_path):
  workdir = str(tmp_path / "sharded")
  shards = [run(searched_file, workdir, f"--shard={i}/2") for i in range(2)]
  for shard in shards:
    out, _ = shard.communicate(timeout=600)
    assert shard.returncode == 0, out
  assert rows_of(workdir) == rows_of(reference)
