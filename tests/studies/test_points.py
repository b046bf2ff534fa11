"""A point's role is data: checked before anything trains, written into its
workdir, read back by the report; old names are read once, by one function,
and renaming a point changes nothing the report computes."""

import json
import os
import sqlite3

import pytest

from configs import fashion_mnist
from configs.studies import fashion_mnist as default_study
from configs.studies import fashion_mnist_optimizers, imagenet_limit, imagenet_recipe
from lbt.errors import ConfigError
from lbt.io import layout
from lbt.reports import study_report
from lbt.studies import directory, points, results, work
from study_dirs import write_choice, write_point

SWEEP = {"section": "sweep", "cell": "momentum-b128", "optimizer": "momentum", "batch": 128}


@pytest.mark.parametrize("role, field, allowed", [
    ("sweep", "point p: role", "a dict with the fields section, cell"),
    (dict(SWEEP, section="tuned"), "point p: role.section", "one of sweep, ladder, hoffer"),
    (dict(SWEEP, rung=1), "point p: role.rung", "no such field in a sweep role"),
    (dict(SWEEP, section="ladder", rung=1), "point p: role.change", "required in a ladder"),
    (dict(SWEEP, section="hoffer", variant="cube"), "point p: role.variant",
     "one of sqrt, sqrt-gbn, regime"),
    (dict(SWEEP, section="schedule", schedule="linear"), "point p: role.schedule",
     "one of constant, steps, noise"),
    (dict(SWEEP, batch=True), "point p: role.batch", "an int > 0"),
    (dict(SWEEP, cell=""), "point p: role.cell", "a non-empty string"),
    (dict(SWEEP, learning_rate=-0.1), "point p: role.learning_rate", "a positive number"),
    (dict(SWEEP, section="limit"), "point p: role.learning_rate", "required in a limit"),
])
def test_a_bad_role_names_its_field_and_what_is_allowed(role, field, allowed):
  with pytest.raises(ConfigError) as info:
    points.check_role("p", role)
  assert info.value.field == field and allowed in info.value.allowed


@pytest.mark.parametrize("name, role", [
    ("momentum-b128", SWEEP),
    ("lars-b16384-tuned-lr0.5", {"section": "sweep", "cell": "lars-b16384-tuned",
                                 "optimizer": "lars", "batch": 16384, "learning_rate": 0.5}),
    ("adam-b256-tuned-lr1e-05", {"section": "sweep", "cell": "adam-b256-tuned",
                                 "optimizer": "adam", "batch": 256, "learning_rate": 1e-05}),
    ("momentum-b60000-recipe0", {"section": "ladder", "cell": "momentum-b60000-recipe0",
                                 "optimizer": "momentum", "batch": 60000, "rung": 0,
                                 "change": "baseline"}),
    ("lars-b60000-recipe12", {"section": "ladder", "cell": "lars-b60000-recipe12",
                              "optimizer": "lars", "batch": 60000, "rung": 12,
                              "change": "unknown"}),
    ("momentum-b2048-sqrt-gbn", {"section": "hoffer", "cell": "momentum-b2048-sqrt-gbn",
                                 "optimizer": "momentum", "batch": 2048,
                                 "variant": "sqrt-gbn"}),
    ("momentum-b128-noise", dict(SWEEP, section="noise", cell="momentum-b128-noise")),
    ("momentum-b256-batch-steps", {"section": "schedule", "cell": "momentum-b256-batch-steps",
                                   "optimizer": "momentum", "batch": 256,
                                   "schedule": "steps"}),
    ("lars-b512-target-lr0.25", {"section": "limit", "cell": "b512", "optimizer": "lars",
                                 "batch": 512, "learning_rate": 0.25}),
])
def test_role_from_name_reads_every_old_name(name, role):
  assert points.role_from_name(name) == role


@pytest.mark.parametrize("name", ["baseline", "momentum-b128-cube", "momentum-b256-batch-linear",
                                  "lars-b512-target", "momentum-b128-lr0"])
def test_a_name_outside_the_old_grammar_is_refused_naming_the_point(name):
  with pytest.raises(ConfigError, match=f"^point {name}"):
    points.role_from_name(name)


@pytest.mark.parametrize("study", [
    default_study.get_study("untuned"), fashion_mnist_optimizers.get_study(),
    imagenet_limit.get_study("lars+momentum"), imagenet_recipe.get_study()])
def test_study_files_declare_the_roles_their_old_names_said(study):
  """Built from each study's structure, not its names, the roles agree with
  what the names said (but a ladder rung now names its ingredient), so an old
  directory's migrated roles and a rerun's declared ones are the same."""
  declared = points.study_points(study)
  assert all(isinstance(value, points.Point) for value in study.values())
  for name, (_, role, _) in declared.items():
    old = points.role_from_name(name)
    if role["section"] == "ladder":
      assert role.pop("change") and old.pop("change")
    assert role == old, name


@pytest.mark.parametrize("arg", ["", "quick", "full"])
def test_the_tuned_studies_declare_valid_roles_and_searches(arg):
  declared = points.study_points(default_study.get_study(arg))
  searched = {n for n, p in declared.items() if p.search is not None}
  assert searched and all(declared[n].config.dataset.validation_examples for n in searched)
  rules = [p.role for p in declared.values() if "rule" in p.role]
  assert rules and all(r["section"] == "ladder" for r in rules)


def test_the_quick_study_logs_every_update_of_the_momentum_sweep():
  logged = {n for n, (c, _, _) in default_study.get_study("quick").items()
            if c.log_every_steps == 1}
  assert logged == {"momentum-b512", "momentum-b4096"}


def test_the_points_of_one_cell_are_the_trials_of_its_learning_rate():
  trial = lambda lr, **changes: dict(SWEEP, learning_rate=lr, **changes)
  points.check_cells({"a": trial(0.1), "b": trial(0.2), "c": SWEEP | {"cell": "other"}})
  for second in (SWEEP, trial(0.1), trial(0.2, batch=256), trial(0.2, optimizer="lars")):
    with pytest.raises(ConfigError, match="^point b: role=.* a point of the same cell"):
      points.check_cells({"a": trial(0.1), "b": second})


def test_a_role_describes_its_config():
  config = fashion_mnist.get_config("momentum,batch=128,model=mlp")
  points.check_agrees("p", config, dict(SWEEP, learning_rate=config.optimizer.learning_rate))
  for field, value in (("batch", 256), ("optimizer", "lars"), ("learning_rate", 9.0)):
    with pytest.raises(ConfigError, match=f"^point p: role.{field}=.*its config's"):
      points.check_agrees("p", config, dict(SWEEP, **{field: value}))


def test_the_runner_refuses_a_bad_role_before_anything_trains(make_config, tmp_path):
  config = make_config("momentum,batch=128,model=mlp")
  workdir = str(tmp_path / "study")
  studies = {"role.batch": {"a": points.Point(config, dict(SWEEP, batch=256))},
             "role.section": {"a": points.Point(config, dict(SWEEP, section="sweeps"))}}
  for field, study in studies.items():
    with pytest.raises(ConfigError, match=field):
      work.run_study(study, workdir)
  assert not os.path.exists(workdir)


@pytest.mark.parametrize("name", ["momentum-b512-diverge", "baseline", "lars-b1024-tuned-lr0.5",
                                  "my.run_2"])
def test_a_plain_config_is_a_point_of_its_own_under_any_name(name):
  """A study file's plain config is a plain point whatever its name, even
  an old name that says something else: the name parser is for old
  directories only."""
  config = fashion_mnist.get_config("momentum,batch=512,model=mlp")
  found = points.study_points({name: config, "other": points.Point(config, SWEEP | {
      "batch": 512, "cell": "momentum-b512"})})
  assert found[name].role == {"section": "plain", "cell": name, "optimizer": "momentum",
                              "batch": 512}
  assert found[name].config is config and found[name].search is None


def test_a_plain_config_without_an_optimizer_is_refused_naming_the_field():
  config = fashion_mnist.get_config("momentum,batch=512")
  with config.unlocked():
    del config["optimizer"]
  with pytest.raises(ConfigError, match="^point p: role.optimizer=None is invalid: .*"
                     "optimizer.name"):
    points.study_points({"p": config})


def test_a_study_of_plain_configs_runs_reports_and_resumes(make_config, tmp_path):
  """{any-name: config}, as before roles: each point trains, gets its plain
  role, a row and a place in the report, and a rerun skips it."""
  def config(arg, steps):
    made = make_config(arg + ",model=mlp", num_train_steps=steps, eval_every_steps=2,
                       log_every_steps=1, eval_batch_size=5000, schedule__warmup_epochs=0.2)
    made.model.hidden_sizes = (16,)
    return made
  study = {"momentum-b512-diverge": config("momentum,batch=6000", 2),
           "my.run_2": config("sgd,batch=12000", 2)}
  workdir = str(tmp_path / "study")
  assert work.run_study(study, workdir).statuses == {n: "finished" for n in study}
  rows = {r["name"]: r for r in results.read_database(workdir)}
  for name in study:
    with open(os.path.join(workdir, name, layout.ROLE)) as f:
      assert json.load(f)["section"] == "plain"
    assert (rows[name]["section"], rows[name]["cell"]) == ("plain", name)
    assert rows[name]["final_accuracy"] > 0
  with open(study_report.build_report(workdir)) as f:
    text = f.read()
  assert "| plain | 2 | 2 |" in text  # what each section cost: both points, cells of their own
  records = {n: (tmp_path / "study" / n / layout.METRICS).read_text() for n in study}
  again = work.run_study(study, workdir)  # a rerun: nothing left to train
  assert again.done and not again.failed
  assert records == {n: (tmp_path / "study" / n / layout.METRICS).read_text() for n in study}


def test_a_changed_role_is_rewritten_and_said(tmp_path, capsys):
  config = fashion_mnist.get_config("momentum,batch=128,model=mlp")
  path = tmp_path / "p" / layout.ROLE
  directory.write_roles(str(tmp_path), {"p": points.Point(config, SWEEP)}, "lbt.study")
  assert json.loads(path.read_text()) == SWEEP
  before = path.stat().st_mtime_ns
  directory.write_roles(str(tmp_path), {"p": points.Point(config, SWEEP)}, "lbt.study")
  assert path.stat().st_mtime_ns == before and not capsys.readouterr().out
  directory.write_roles(str(tmp_path), {"p": points.Point(config, dict(SWEEP, cell="m128"))},
                        "lbt.study")
  assert json.loads(path.read_text())["cell"] == "m128"
  assert "lbt.study: point p: role" in capsys.readouterr().out


# A small study whose every number is known (`study_dirs.write_point`).
SPEC = [
    ("momentum-b128", "momentum,batch=128", dict(updates=100, evals=[(50, 0.8), (100, 0.9)])),
    ("momentum-b1024", "momentum,batch=1024", dict(updates=20, evals=[(10, 0.86), (20, 0.88)])),
    ("lars-b128", "lars,batch=128", dict(updates=100, evals=[(100, 0.89)])),
    ("lars-b1024", "lars,batch=1024", dict(updates=20, evals=[(20, 0.885)])),
    ("momentum-b1024-tuned-lr0.05", "momentum,batch=1024",
     dict(updates=20, evals=[(20, 0.85)], validation=0.91, optimizer__learning_rate=0.05)),
    ("momentum-b1024-tuned-lr0.1", "momentum,batch=1024",
     dict(updates=20, evals=[(20, 0.87)], validation=0.89)),
    ("momentum-b1024-recipe0", "momentum,batch=1024", dict(updates=20, evals=[(20, 0.3)])),
    ("lars-b1024-recipe1", "lars,batch=1024", dict(updates=20, evals=[(20, 0.5)])),
    ("momentum-b1024-regime", "momentum,batch=1024",
     dict(updates=100, evals=[(100, 0.89)], optimizer__scaling="sqrt")),
]


def write_study(workdir, rename=lambda name: name, roles=True):
  """SPEC's points under `rename`d names, with their roles (or none, as
  before roles existed), and study.json in SPEC's order."""
  for name, arg, kwargs in SPEC:
    write_point(workdir, rename(name), arg, role=points.role_from_name(name) if roles else None,
                **kwargs)
  with open(os.path.join(workdir, layout.STUDY), "w") as f:
    json.dump({"points": [rename(n) for n, _, _ in SPEC], "target_accuracy": 0.85}, f)
  trial = lambda rate, score: {"learning_rate": rate, "status": "finished", "score": score,
                               "runs": [rename(f"momentum-b1024-tuned-lr{rate}")]}
  write_choice(workdir, "momentum-b1024-tuned", learning_rate=0.05, tied_low=0.05,
               tied_high=0.05, bracketed=False, reason="the best is the lowest rate tried",
               trials=[trial(0.05, 0.91), trial(0.1, 0.89)],
               chosen_runs=[rename("momentum-b1024-tuned-lr0.05")])
  with open(study_report.build_report(workdir)) as f:
    return f.read()


def test_renaming_the_points_keeps_the_report_table(tmp_path):
  named, renamed = str(tmp_path / "named"), str(tmp_path / "renamed")
  text = write_study(named)
  other = write_study(renamed, lambda name: f"point{[n for n, _, _ in SPEC].index(name)}")
  table = study_report.main_table(named)
  assert "| momentum (LR tuned) |  | 85.00† (2) |" in table  # one run; two rates tried
  assert "| lars | 89.00 | 88.50 |" in table
  assert study_report.main_table(renamed) == table
  chosen = "`momentum-b1024-tuned`: base LR 0.05 (tied 0.05–0.05) among 0.05 (91.00% val)"
  assert chosen in text and chosen in other
  assert "| + regime adaptation | 1024 |" in other


def test_an_old_directory_reports_from_its_names_and_reading_writes_nothing(tmp_path):
  old, new = str(tmp_path / "old"), str(tmp_path / "new")
  write_study(old, roles=False)
  write_study(new)
  assert study_report.main_table(old) == study_report.main_table(new)
  for name, _, _ in SPEC:  # The roles were read from the names, in memory.
    assert not os.path.exists(os.path.join(old, name, layout.ROLE))
  # results.sqlite of the old schema: rebuilt when read, as at every schema change.
  os.remove(os.path.join(old, layout.DATABASE))
  connection = sqlite3.connect(os.path.join(old, layout.DATABASE))
  with connection:
    connection.execute("CREATE TABLE points (name TEXT PRIMARY KEY, grid TEXT, variant TEXT)")
    connection.executemany("INSERT INTO points VALUES (?, '', '')", [[n] for n, _, _ in SPEC])
  connection.close()
  rows = {r["name"]: r for r in results.read_database(old)}
  assert (rows["lars-b1024-recipe1"]["section"], rows["lars-b1024-recipe1"]["rung"]) == (
      "ladder", 1)
  assert rows["momentum-b1024-tuned-lr0.05"]["cell"] == "momentum-b1024-tuned"
  # A role.json (the runner writes the study file's) is the role, not the name.
  role_file = os.path.join(old, "lars-b1024-recipe1", layout.ROLE)
  with open(role_file, "w") as f:
    json.dump(dict(points.role_from_name("lars-b1024-recipe1"), change="lars"), f)
  rows = {r["name"]: r for r in results.rebuild_database(old)[0]}
  assert rows["lars-b1024-recipe1"]["change"] == "lars"
