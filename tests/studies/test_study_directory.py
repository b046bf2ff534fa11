"""The study directory loses nothing: results.sqlite damaged, garbage, stale or
left with a journal; two studies in one directory; names that collide with
the study's files; an empty shard; a full disk under the report's plots."""

import os
import shutil
import sqlite3

import pytest

from lbt.io import layout
from lbt.io import cli
from lbt import errors
from lbt.studies import results
from lbt.reports import study_report
from lbt import study
from lbt.errors import ConfigError
from tiny_study import TIMING, load, run_study


def rows_of(workdir):
  return [{k: v for k, v in r.items() if k not in TIMING}
          for r in results.read_database(workdir)]


@pytest.fixture
def finished(uninterrupted, tmp_path):
  """A copy of the finished tiny study (each test may damage its own)."""
  source, _ = uninterrupted
  workdir = str(tmp_path / "study")
  shutil.copytree(source, workdir)
  return workdir


def test_a_garbage_database_is_rebuilt_and_never_blocks_the_study(study_file, finished):
  expected = rows_of(finished)
  database = os.path.join(finished, layout.DATABASE)
  with open(database, "wb") as f:
    f.write(b"this is not a database" * 100)
  shutil.rmtree(os.path.join(finished, "lars-b6000"))  # A point still to run.
  assert run_study(load(study_file), finished) == {"lars-b6000": "finished"}
  assert rows_of(finished) == expected


def test_a_leftover_journal_never_rolls_back_onto_the_rebuilt_database(finished):
  """What a kill -9 inside an old-style transaction leaves: a hot journal
  beside the database. It is neither applied nor kept."""
  expected = rows_of(finished)
  database = os.path.join(finished, layout.DATABASE)
  hot = sqlite3.connect(database, isolation_level=None)
  hot.execute("PRAGMA journal_mode=DELETE")
  hot.execute("BEGIN")
  hot.execute("DELETE FROM points")
  saved = open(database + "-journal", "rb").read() if os.path.exists(
      database + "-journal") else None
  hot.execute("ROLLBACK")
  hot.close()
  if saved is not None:
    with open(database + "-journal", "wb") as f:
      f.write(saved)
  study_report.build_report(finished)
  assert rows_of(finished) == expected
  assert not os.path.exists(database + "-journal")


def test_a_stale_database_missing_a_point_is_rebuilt_when_opened(finished):
  expected = rows_of(finished)
  connection = sqlite3.connect(os.path.join(finished, layout.DATABASE))
  with connection:
    connection.execute("DELETE FROM points WHERE name = 'sgd-b6000'")
  connection.close()
  assert rows_of(finished) == expected


def test_a_second_study_is_refused_naming_the_one_that_owns_the_directory(
    study_file, finished, tmp_path, capsys):
  assert study.main(["lbt.study", f"--study={study_file}", f"--workdir={finished}"]) == 0
  capsys.readouterr()
  other = tmp_path / "other_study.py"
  other.write_text(open(study_file).read())
  before = open(os.path.join(finished, layout.STUDY)).read()
  status = study.main(["lbt.study", f"--study={other}", f"--workdir={finished}"])
  err = capsys.readouterr().err.strip().splitlines()
  assert status == 2 and len(err) == 1
  assert "tiny_study.py" in err[0] and "another --workdir" in err[0]
  assert open(os.path.join(finished, layout.STUDY)).read() == before


@pytest.mark.parametrize("name", ["study.json", "results.sqlite", "report", "limit.json",
                                  "results.sqlite.lock"])
def test_point_names_that_collide_with_the_study_files_are_refused(make_config, name,
                                                                   tmp_path):
  with pytest.raises(ConfigError, match="point name"):
    run_study({name: make_config("momentum")}, str(tmp_path / "s"))
  assert not os.path.exists(tmp_path / "s" / name)


def test_an_empty_shard_leaves_the_report_as_it_is(study_file, finished, capsys):
  path = os.path.join(finished, "report", "report.md")
  before = open(path).read()
  status = study.main(["lbt.study", f"--study={study_file}", f"--workdir={finished}",
                       "--only=sgd-*", "--shard=1/2"])
  out = capsys.readouterr().out
  assert status == 0 and "nothing was left to run (shard 1/2)" in out and "wave" not in out
  assert open(path).read() == before


def test_a_full_disk_under_the_plots_is_one_write_error_and_keeps_the_old_png(
    finished, monkeypatch):
  png = os.path.join(finished, "report", "accuracy_vs_batch.png")
  before = open(png, "rb").read()
  real_open = open

  def full_disk(path, mode="r", *args, **kwargs):
    if str(path).endswith(".tmp") and "w" in mode and str(path).startswith(
        os.path.join(finished, "report")) and ".png" in str(path):
      raise OSError(28, "No space left on device", str(path))
    return real_open(path, mode, *args, **kwargs)
  monkeypatch.setattr("builtins.open", full_disk)
  with pytest.raises(errors.WriteError, match=r"a plot .*No space left on device"):
    study_report.build_report(finished)
  monkeypatch.undo()
  assert open(png, "rb").read() == before
  assert not [f for f in os.listdir(os.path.dirname(png)) if f.endswith(".tmp")]
  assert errors.exit_status(errors.WriteError("p", "r")) == 4


def test_cli_of_the_study_resolves_the_target_by_one_precedence():
  assert results.resolve_target(0.9, 0.8, 0.7) == 0.9
  assert results.resolve_target(None, 0.8, 0.7) == 0.8
  assert results.resolve_target(None, None, 0.7) == 0.7
  assert results.resolve_target(None, None, None) is None
  assert cli.file_id("configs/studies/fashion_mnist.py:quick") == (
      "configs/studies/fashion_mnist.py:quick")
