"""Fault injection: a small study of every kind of work (plain points, a
searched cell, a steps-to-target protocol: all through the one runner) killed
(SIGKILL) at every named moment (lbt.io.faults), and a plain one stopped by
SIGTERM and Ctrl-C at chosen ones, each stop followed by a rerun of the same
command; the last rerun ends with the rows, choices, limit.json and report
table of an uninterrupted run. Where each stop lands is chosen, not timed."""

import json
import os

import pytest

from lbt.io import layout
from lbt.studies import results
from lbt.reports import study_report
from tiny_study import FAULT_STUDY_FILE, TIMING
import kill_sweep

# Each kill lands in the run the previous one left (a moment's count is per
# process); kills inside a point's training loop (updates, checkpoints) are
# swept by tests/engine/test_reliability.py and the signals below. The first wave holds the plain points momentum-b12000, sgd-b6000
# (which diverges) and lars-b6000 (checkpointed every 5 of its 30 updates),
# the searched cell's three rates and the protocol's first three trials; the
# protocol's later waves follow.
KILLS = (
    "start:1",        # before the flags are read: nothing written yet
    "write:1",        # study.json written beside itself, not renamed
    "claim:4",        # the wave journaled and its roles written; 4 of its 9 configs
    "setup:1",        # the rest of the journal's wave claimed; momentum-b12000 set up
    "point_end:1",    # momentum-b12000 ended, its row not written
    "database:1",     # sgd-b6000 diverged, its row's results.sqlite not renamed
    "row:1",          # lars-b6000's row in place, the searched cell's first rate not started
    "point_end:2",    # the searched cell's second rate ended, its row not written
    "point_end:3",    # the protocol's first trial ended, its row not written
    "claim:1",        # the protocol's second wave journaled, its trial's config written
    "ended:1",        # a protocol trial stopped at its batch's best count
    "limit:1",        # every trial ended, limit.json not written
    "write:1",        # limit.json written beside itself, not renamed
    "report:1",       # the report's plots written, report.md not
)


def strip(rows):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture(scope="module")
def fault_file(data_dir, tmp_path_factory):
  path = tmp_path_factory.mktemp("fault_study") / "fault_study.py"
  path.write_text(FAULT_STUDY_FILE.format(data_dir=data_dir))
  return str(path)


def outcome(workdir):
  """What the study wrote: its rows, its protocol's rows and limit.json, the
  searched cell's choice, the report's table."""
  protocol = os.path.join(workdir, layout.LIMITS, "momentum")
  with open(os.path.join(protocol, layout.LIMIT)) as f:
    limit = json.load(f)
  with open(os.path.join(workdir, layout.choice_file("momentum-b12000-searched"))) as f:
    choice = json.load(f)
  return (strip(results.read_database(workdir)), strip(results.read_database(protocol)),
          limit, choice, study_report.main_table(workdir))


def test_a_kill_at_every_moment_of_a_study_then_a_rerun_loses_nothing(fault_file, tmp_path):
  reference, workdir = str(tmp_path / "reference"), str(tmp_path / "faults")
  uninterrupted = kill_sweep.run(kill_sweep.python(
      "lbt.study", f"--study={fault_file}", f"--workdir={reference}"))
  assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
  command = kill_sweep.python("lbt.study", f"--study={fault_file}", f"--workdir={workdir}")
  kill_sweep.sweep(command, KILLS, str(tmp_path / "moments"), lambda fault:
                   kill_sweep.assert_ended_as(workdir, reference, fault))
  final = kill_sweep.run(command)
  assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
  kill_sweep.assert_ended_as(workdir, reference, "the last rerun")
  assert outcome(workdir) == outcome(reference)


# (where the signal lands, the exit status, its one line): lars-b6000's set-up
# (outside the training loop: at once), its third update (SIGTERM saves that
# update), its fourth after resuming (Ctrl-C stops at the end of the update),
# the report (outside the loop again).
SIGNALS = (("setup:3:TERM", 143, "lbt: SIGTERM outside the training loop"),
           ("update:3:TERM", 143, "lbt: SIGTERM: saved the checkpoint of update 3"),
           ("update:4:INT", 130, "lbt: interrupted; rerun"),
           ("report:1:TERM", 143, "lbt: SIGTERM outside the training loop"))


def test_sigterm_and_ctrl_c_during_a_study_are_one_line_and_lose_nothing(
    study_file, uninterrupted, tmp_path):
  reference, _ = uninterrupted
  workdir = str(tmp_path / "signals")
  command = kill_sweep.python("lbt.study", f"--study={study_file}", f"--workdir={workdir}")
  for fault, status, line in SIGNALS:
    stopped = kill_sweep.stop_at(command, fault, str(tmp_path / "moments"))
    out = stopped.stdout + "\n" + stopped.stderr
    lbt_lines = [l for l in out.splitlines() if l.startswith("lbt: ")
                 and ("SIGTERM" in l or "interrupted" in l)]
    assert stopped.returncode == status and len(lbt_lines) == 1, (fault, out[-2000:])
    assert lbt_lines[0].startswith(line) and "Traceback" not in out, (fault, out[-2000:])
  final = kill_sweep.run(command)
  assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-2000:]
  assert strip(results.read_database(workdir)) == strip(results.read_database(reference))
