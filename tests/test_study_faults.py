"""Fault injection: a small study killed (SIGKILL) at every named moment of a
study (lbt.io.faults), and stopped by SIGTERM and Ctrl-C at chosen ones, each
stop followed by a rerun of the same command; the last rerun ends with the
rows and the report table of an uninterrupted run. Where each stop lands is
chosen, not timed."""

from lbt.studies import results
from lbt.reports import study_report
from tiny_study import TIMING
import kill_sweep

# Each kill lands in the run the previous one left (a moment's count is per
# process; the tiny study's points are momentum-b12000, then sgd-b6000, which
# diverges, then lars-b6000, checkpointed every 5 of its 30 updates).
KILLS = (
    "start:1",       # before the flags are read: nothing written yet
    "write:1",       # study.json written beside itself, not renamed
    "setup:1",       # momentum-b12000 set up, before its first update
    "update:2",      # momentum-b12000 before its first checkpoint
    "ended:1",       # its last update checkpointed, its summary not written
    "point_end:1",   # it ended, its row not written
    "database:1",    # sgd-b6000 diverged, its row's results.sqlite not renamed
    "write:2",       # lars-b6000's config.json written beside itself, not renamed
    "update:3",      # lars-b6000 before its first checkpoint
    "checkpoint:2",  # right after its checkpoint of update 10
    "update:4",      # between two checkpoints (update 14)
    "ended:1",       # its last update checkpointed, its summary not written
    "row:1",         # its row in place, the report not started
    "database:1",    # the report's rebuild of results.sqlite, not renamed
    "write:3",       # a plot of the report written beside itself, not renamed
    "report:1",      # the plots written, report.md not
)


def strip(rows):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_a_kill_at_every_moment_of_a_study_then_a_rerun_loses_nothing(
    study_file, uninterrupted, tmp_path):
  reference, _ = uninterrupted
  workdir = str(tmp_path / "faults")
  command = kill_sweep.python("lbt.study", f"--study={study_file}", f"--workdir={workdir}")
  kill_sweep.sweep(command, KILLS, str(tmp_path / "moments"), lambda fault:
                   kill_sweep.assert_ended_as(workdir, reference, fault))
  final = kill_sweep.run(command)
  assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
  kill_sweep.assert_ended_as(workdir, reference, "the last rerun")
  assert strip(results.read_database(workdir)) == strip(results.read_database(reference))
  assert study_report.main_table(workdir) == study_report.main_table(reference)


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
