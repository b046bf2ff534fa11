"""Fault injection: a small study killed (SIGKILL) ten times at seeded moments
spread over training, the rows written as points end and the report, each
kill followed by a rerun of the same command; the last rerun ends with the
rows and the report table of an uninterrupted run."""

import os
import random
import signal
import subprocess
import sys
import threading

from lbt.studies import results
from lbt.reports import study_report
from tiny_study import TIMING

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SEED = 20261205
# (what the kill waits for in the runner's output, the seconds after it,
# drawn uniformly from this range): training, a point's end (its row is
# written next), and the report (after the last point ended).
MOMENTS = ([("start", (1.0, 8.0))] * 4 + [("point end", (0.0, 0.05))] * 3
           + [("report", (0.0, 1.5))] * 3)


def strip(rows):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def run_until(command, trigger, delay):
  """Runs the study and kills it `delay` s after `trigger` is seen in its
  output; returns whether the kill landed before the run ended, and the output."""
  process = subprocess.Popen(command, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  timers = []

  def arm():
    if not timers:
      timers.append(threading.Timer(delay, lambda: process.poll() is None and
                                    process.send_signal(signal.SIGKILL)))
      timers[0].start()
  if trigger == "start":
    arm()
  output, last_point_seen = [], False
  for line in process.stdout:
    output.append(line)
    last_point_seen |= "[3/3]" in line
    ended = line.startswith("lbt: test accuracy") or "skipped" in line
    if ended and (trigger == "point end" or (trigger == "report" and last_point_seen)):
      arm()
  process.wait()
  for timer in timers:
    timer.cancel()
  return process.returncode == -signal.SIGKILL, "".join(output)


def test_ten_kills_at_random_moments_lose_nothing(study_file, uninterrupted, tmp_path):
  reference, _ = uninterrupted
  workdir = str(tmp_path / "faults")
  command = [sys.executable, "-m", "lbt.study", f"--study={study_file}",
             f"--workdir={workdir}"]
  rng = random.Random(SEED)
  landed = []
  for trigger, (low, high) in MOMENTS:
    killed, out = run_until(command, trigger, rng.uniform(low, high))
    landed.append((trigger, killed))
    assert killed or "lbt.study: report" in out, out[-3000:]
  final = subprocess.run(command, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                         capture_output=True, text=True, timeout=600)
  assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
  assert strip(results.read_database(workdir)) == strip(results.read_database(reference))
  assert study_report.main_table(workdir) == study_report.main_table(reference)
  assert sum(k for _, k in landed) >= 6, landed  # Most moments were hit.


def signal_at(command, trigger, signum, delay=0.3):
  """Runs the study; sends `signum` `delay` s after `trigger` appears in its
  output; returns (exit status, output)."""
  process = subprocess.Popen(command, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  output, sent = [], []
  for line in process.stdout:
    output.append(line)
    if trigger in line and not sent:
      sent.append(threading.Timer(delay, process.send_signal, (signum,)))
      sent[0].start()
  process.wait()
  return process.returncode, "".join(output)


def test_sigterm_and_ctrl_c_during_a_study_are_one_line_and_lose_nothing(
    study_file, uninterrupted, tmp_path):
  reference, _ = uninterrupted
  workdir = str(tmp_path / "signals")
  command = [sys.executable, "-m", "lbt.study", f"--study={study_file}",
             f"--workdir={workdir}"]
  # During the third point's training, then while the report is written.
  for trigger, signum, status in (("[3/3] lars-b6000 (starting", signal.SIGTERM, 143),
                                  ("[3/3] lars-b6000 (resuming", signal.SIGINT, 130),
                                  ("[3/3] lars-b6000: finished, skipped", signal.SIGTERM, 143)):
    code, out = signal_at(command, trigger, signum)
    if code == 0:  # The run ended before the signal: nothing to check this time.
      continue
    lbt_lines = [l for l in out.splitlines() if l.startswith("lbt: ")
                 and ("SIGTERM" in l or "interrupted" in l)]
    assert code == status and len(lbt_lines) == 1, out[-2000:]
    assert "Traceback" not in out
  final = subprocess.run(command, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                         capture_output=True, text=True, timeout=600)
  assert final.returncode == 0, final.stdout[-2000:]
  assert strip(results.read_database(workdir)) == strip(results.read_database(reference))
