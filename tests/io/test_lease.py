"""One trainer per workdir (the lease), and write failures as one line.

Holders run in subprocesses: a lease names a process, and a second locker in
the same process shares the lease (re-entrance) instead of being refused.
"""

import errno
import json
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from lbt.io import layout
from lbt import errors
from lbt.io import files, logs, metrics
from lbt.io import lease as lease_lib
from lbt.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Waits for a file named GO (so that racers start together; with a fourth
# argument it first says "ready"), locks, says so, holds until stdin closes
# while checking the lease, and reports a lost lease.
HOLDER = """
import os, sys, time
from lbt import errors
from lbt.io import lease as lease_lib
path, timeout, beat = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
if len(sys.argv) > 4:
  print("ready", flush=True)
while not os.path.exists(os.path.join(os.path.dirname(path), "GO")):
  time.sleep(0.005)
try:
  with lease_lib.lock(path, "train", timeout_s=timeout, heartbeat_s=beat) as lease:
    print("held", os.getpid(), flush=True)
    import select
    while not select.select([sys.stdin], [], [], 0.02)[0]:
      lease.check()
except errors.WorkdirBusy as e:
  print("busy", e, flush=True)
  sys.exit(2)
"""


def holder(path, timeout=60.0, beat=5.0, announce=False):
  return subprocess.Popen(
      [sys.executable, "-c", HOLDER, str(path), str(timeout), str(beat)]
      + (["announce"] if announce else []),
      cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), stdin=subprocess.PIPE,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def go(tmp_path):
  (tmp_path / "GO").touch()


def test_second_locker_is_refused_with_the_holder_named_and_gets_it_after_release(tmp_path):
  path = tmp_path / "run"
  first = holder(path)
  go(tmp_path)
  assert first.stdout.readline().split() == ["held", str(first.pid)]
  with pytest.raises(errors.WorkdirBusy) as info:
    with lease_lib.lock(str(path)):
      pass
  message = str(info.value)
  assert isinstance(info.value, ConfigError) and "\n" not in message
  assert f"pid {first.pid} on host {socket.gethostname()}" in message
  assert "since 20" in message and "another workdir" in message
  assert info.value.holder["pid"] == first.pid
  # Refused before touching anything: the holder's lease is as it was.
  assert json.loads((path / layout.LOCK).read_text())["pid"] == first.pid

  first.stdin.close()
  assert first.wait(timeout=30) == 0
  assert not (path / layout.LOCK).exists()
  with lease_lib.lock(str(path)) as lease:
    assert lease.took_over is None


def test_two_lockers_at_once_exactly_one_wins(tmp_path):
  for round_ in range(3):
    path = tmp_path / f"run{round_}"
    racers = [holder(path, announce=True) for _ in range(2)]
    assert [r.stdout.readline().strip() for r in racers] == ["ready", "ready"]
    go(tmp_path)  # Both are waiting for it: they race for the lock.
    lines = [r.stdout.readline().split() for r in racers]
    winners = [r for r, line in zip(racers, lines) if line[0] == "held"]
    assert len(winners) == 1, lines
    loser = next(line for line in lines if line[0] == "busy")
    assert f"pid {winners[0].pid} on host" in " ".join(loser)
    winners[0].stdin.close()
    for r in racers:
      r.wait(timeout=30)
    os.remove(tmp_path / "GO")


def test_lease_of_a_killed_holder_is_taken_over_at_once(tmp_path):
  path = tmp_path / "run"
  killed = holder(path)
  go(tmp_path)
  assert killed.stdout.readline().startswith("held")
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  assert (path / layout.LOCK).exists()
  with lease_lib.lock(str(path)) as lease:
    assert f"pid {killed.pid}" in lease.took_over and "is gone" in lease.took_over
    assert json.loads((path / layout.LOCK).read_text())["pid"] == os.getpid()
  assert not (path / layout.LOCK).exists()


def wait_for_state(pid, state, task=None):
  """Polls /proc until the process (or one of its threads) is in `state`:
  'Z' a zombie (then also until its other threads are gone), 'T' stopped.
  Returns once the kernel says so, not after a guessed delay."""
  stat = f"/proc/{pid}/task/{task}/stat" if task else f"/proc/{pid}/stat"
  deadline = time.monotonic() + 30
  while True:
    with open(stat) as f:
      now = f.read().rsplit(")", 1)[1].split()[0]
    whole = task or state != "Z" or os.listdir(f"/proc/{pid}/task") == [str(pid)]
    if now == state and whole:
      return
    assert time.monotonic() < deadline, f"{stat} stayed {now}, never {state}"
    time.sleep(0.005)


def test_lease_of_a_zombie_holder_is_taken_over_at_once_and_a_stopped_one_kept(
    tmp_path, capsys):
  # Killed, and its parent (this test, as a scheduler or a container's first
  # process may) does not reap it: its pid lives on, its heartbeat is fresh.
  path = tmp_path / "run"
  zombie = holder(path)
  go(tmp_path)
  assert zombie.stdout.readline().startswith("held")
  zombie.send_signal(signal.SIGKILL)
  try:
    wait_for_state(zombie.pid, "Z")
    os.kill(zombie.pid, 0)  # The pid still answers.
    held = json.loads((path / layout.LOCK).read_text())
    assert held["pid"] == zombie.pid and time.time() - held["heartbeat"] < 30
    capsys.readouterr()
    with lease_lib.lock(str(path)) as lease:  # timeout_s=60: at once, not by expiry.
      assert f"pid {zombie.pid}" in lease.took_over and "a zombie" in lease.took_over
    said = capsys.readouterr().out.splitlines()
    assert len(said) == 1 and "took over the lock" in said[0] and "zombie" in said[0]
  finally:
    zombie.wait()

  # Stopped (SIGSTOP) is alive: it keeps its lease until the heartbeat timeout.
  stopped = holder(path)
  assert stopped.stdout.readline().startswith("held")
  stopped.send_signal(signal.SIGSTOP)
  try:
    wait_for_state(stopped.pid, "T")
    with pytest.raises(errors.WorkdirBusy, match=f"pid {stopped.pid} on host"):
      with lease_lib.lock(str(path)):
        pass
    assert json.loads((path / layout.LOCK).read_text())["pid"] == stopped.pid
  finally:
    stopped.send_signal(signal.SIGCONT)
    stopped.stdin.close()
  assert stopped.wait(timeout=30) == 0
  assert not (path / layout.LOCK).exists()


# Its main thread exits, another thread lives on (reading stdin) and holds.
LEADER_EXITS = """
import ctypes, sys, threading
threading.Thread(target=sys.stdin.read).start()
print(threading.get_native_id(), flush=True)
ctypes.CDLL(None).pthread_exit(None)
"""


def test_a_holder_whose_main_thread_exited_is_alive_until_all_threads_have(tmp_path):
  # /proc/PID/stat then says 'Z' although the process runs.
  process = subprocess.Popen([sys.executable, "-c", LEADER_EXITS], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
  try:
    main_thread = int(process.stdout.readline())
    wait_for_state(process.pid, "Z", task=main_thread)
    # pylint: disable-next=protected-access
    me, start = lease_lib._identity(), lease_lib._pid_start(process.pid)
    write_lease(tmp_path, **{**me, "pid": process.pid, "pid_start": start})
    with pytest.raises(errors.WorkdirBusy, match=f"pid {process.pid} on host"):
      with lease_lib.lock(str(tmp_path)):
        pass
    process.stdin.close()  # Its last thread ends: now a zombie, unreaped.
    wait_for_state(process.pid, "Z")
    with lease_lib.lock(str(tmp_path)) as lease:
      assert "a zombie" in lease.took_over
  finally:
    process.stdin.close()
    process.wait()


def test_lease_of_a_reused_pid_is_taken_over_at_once(tmp_path):
  me = lease_lib._identity()  # pylint: disable=protected-access
  write_lease(tmp_path, **me)  # This very process, another token: alive.
  with pytest.raises(errors.WorkdirBusy, match=f"pid {os.getpid()} on host"):
    with lease_lib.lock(str(tmp_path)):
      pass
  write_lease(tmp_path, **{**me, "pid_start": str(int(me["pid_start"]) - 1)})
  with lease_lib.lock(str(tmp_path)) as lease:  # Its pid now names a later process.
    assert "the pid was reused" in lease.took_over


def test_stalled_holder_loses_the_lease_and_stops(tmp_path):
  path = tmp_path / "run"
  stalled = holder(path, timeout=1.0, beat=0.1)
  go(tmp_path)
  assert stalled.stdout.readline().startswith("held")
  stalled.send_signal(signal.SIGSTOP)
  try:
    with pytest.raises(errors.WorkdirBusy):  # Alive: its heartbeat is fresh.
      with lease_lib.lock(str(path), timeout_s=1.0):
        pass
    time.sleep(1.5)
    with lease_lib.lock(str(path), timeout_s=1.0, heartbeat_s=0.1) as lease:
      assert "last heartbeat was" in lease.took_over
      stalled.send_signal(signal.SIGCONT)
      out = stalled.stdout.readline()  # Its next heartbeat finds the lease lost.
      assert stalled.wait(timeout=30) == 2
      assert "lost the lock to" in out and f"pid {os.getpid()}" in out
      # The stalled holder did not overwrite or remove our lease.
      lease.check()
      assert json.loads((path / layout.LOCK).read_text())["token"] == lease.token
  finally:
    stalled.send_signal(signal.SIGCONT)


def write_lease(path, **fields):
  path.mkdir(parents=True, exist_ok=True)
  lease = {"host": "elsewhere", "pid": 4242, "purpose": "train", "since": time.time() - 500,
           "heartbeat": time.time(), "token": "theirs", "boot_id": "b", "pid_namespace": "n"}
  lease.update(fields)
  (path / layout.LOCK).write_text(json.dumps(lease))


def test_another_hosts_lease_lives_by_its_heartbeat(tmp_path):
  write_lease(tmp_path)  # Fresh: its pid means nothing here, the heartbeat counts.
  with pytest.raises(errors.WorkdirBusy, match="pid 4242 on host elsewhere"):
    with lease_lib.lock(str(tmp_path)):
      pass
  write_lease(tmp_path, heartbeat=time.time() - 120)
  with lease_lib.lock(str(tmp_path)) as lease:
    assert "host elsewhere" in lease.took_over and "120 s ago" in lease.took_over


def test_a_taker_gives_back_a_fresh_lease_that_replaced_the_stale_one(tmp_path):
  write_lease(tmp_path, heartbeat=time.time() - 120)
  lock_path = tmp_path / layout.LOCK
  _, stale_identity = lease_lib._read_lease(str(lock_path))  # pylint: disable=protected-access
  time.sleep(0.01)
  write_lease(tmp_path, token="fresh")  # Another taker acquired in between.
  taker = lease_lib.Lease(str(tmp_path), "train", 60.0, 5.0, "--workdir")
  assert not taker._take_over(stale_identity)  # pylint: disable=protected-access
  assert json.loads(lock_path.read_text())["token"] == "fresh"
  assert os.listdir(tmp_path) == [layout.LOCK]


def test_released_on_exception_reentrant_and_heartbeating(tmp_path):
  lock_path = tmp_path / layout.LOCK
  with pytest.raises(KeyError):
    with lease_lib.lock(str(tmp_path), heartbeat_s=0.05) as lease:
      with lease_lib.lock(str(tmp_path)) as inner:  # The study runner, then the trainer.
        assert inner is lease
      assert lock_path.exists()
      first = json.loads(lock_path.read_text())["heartbeat"]
      time.sleep(0.3)
      assert json.loads(lock_path.read_text())["heartbeat"] > first
      raise KeyError("boom")
  assert not lock_path.exists()


# ---- write failures ----

def mount_tmpfs(path, size, read_only_after=None):
  path.mkdir(parents=True, exist_ok=True)
  result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
  if result.returncode:
    pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip()})")
  if read_only_after:
    read_only_after(path)
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
  return path


def umount(path):
  subprocess.run(["umount", "--lazy", str(path)], check=False)


def test_write_text_atomic_on_a_full_disk_keeps_the_previous_file(tmp_path):
  mount = mount_tmpfs(tmp_path / "small", "64k")
  try:
    target = mount / "config.json"
    files.write_text_atomic(str(target), "old")
    with pytest.raises(errors.WriteError) as info:
      files.write_text_atomic(str(target), "x" * 200_000)
    assert str(info.value) == f"could not write {target}: No space left on device (ENOSPC)"
    assert target.read_text() == "old" and os.listdir(mount) == ["config.json"]
  finally:
    umount(tmp_path / "small")


def test_read_only_workdir_is_one_line_for_the_lock_config_and_metrics(tmp_path):
  def fill(path):
    (path / "config.json").write_text("{}")
    (path / layout.METRICS).write_text('{"step": 1, "kind": "train"}\n')
  mount = mount_tmpfs(tmp_path / "ro", "64k", read_only_after=fill)
  try:
    failures = {
        "lock": lambda: lease_lib.lock(str(mount)).__enter__(),
        "config": lambda: files.write_text_atomic(str(mount / "config.json"), "{}"),
        "metrics": lambda: metrics.MetricsWriter(str(mount), resume_step=0),
        "log": lambda: logs.capture_logs(str(mount)).__enter__()}
    for fail in failures.values():
      with pytest.raises(errors.WriteError, match=r"Read-only file system \(EROFS\)"):
        fail()
    assert metrics.read_jsonl(str(mount)) == [{"step": 1, "kind": "train"}]
  finally:
    umount(tmp_path / "ro")


def test_metrics_on_a_disk_that_fills_stop_with_one_line_and_keep_the_lines(tmp_path):
  mount = mount_tmpfs(tmp_path / "small", "64k")
  try:
    writer = metrics.MetricsWriter(str(mount))
    with pytest.raises(errors.WriteError) as info:
      for step in range(1, 100_000):
        writer.write(step, "train", {"loss": 0.5, "accuracy": 0.25})
    assert "No space left on device (ENOSPC)" in str(info.value)
    assert str(mount) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(errors.WriteError):
      writer.close()
    steps = [r["step"] for r in metrics.read_jsonl(str(mount), "train")]
    assert steps and steps == list(range(1, len(steps) + 1))
  finally:
    umount(tmp_path / "small")


def test_a_file_where_a_directory_belongs_and_dev_full(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(errors.WriteError, match=r"Not a directory \(ENOTDIR\)"):
    metrics.MetricsWriter(str(tmp_path / "file" / "run"))
  with pytest.raises(errors.WriteError, match=r"/dev/full: No space left on device"):
    with files.writing("/dev/full"):
      with open("/dev/full", "w") as f:
        f.write("x")


def test_permission_denied_for_an_unprivileged_user(tmp_path):
  read_only = tmp_path / "ro"
  read_only.mkdir()
  os.chmod(read_only, 0o555)
  try:
    if os.access(read_only, os.W_OK):
      pytest.skip("running as root: chmod does not stop writes (see the tmpfs tests)")
    with pytest.raises(errors.WriteError, match=r"Permission denied \(EACCES\)"):
      files.write_text_atomic(str(read_only / "config.json"), "{}")
  finally:
    os.chmod(read_only, 0o755)


def test_reason_keeps_the_os_text_whole():
  buried = ValueError("RESOURCE_EXHAUSTED: Error writing \"w/0\" in OCDBT database at "
                      "local file \"/x\": Failed to write 238830 bytes to file 7: No space "
                      "left on device [os_error_code='28']")
  assert files.reason(buried) == "No space left on device (ENOSPC)"
  try:
    try:
      raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    except OSError as e:
      raise RuntimeError("wrapped") from e
  except RuntimeError as e:
    assert files.reason(e) == "Read-only file system (EROFS)"
  assert files.reason(RuntimeError("a\nb")) == "RuntimeError: a b"
  error = errors.WriteError("/w/metrics.jsonl", "No space left on device (ENOSPC)")
  assert str(pickle.loads(pickle.dumps(error))) == str(error)
  busy = lease_lib.busy("/w", {"pid": 1, "host": "h", "heartbeat": time.time()}, "--workdir", 60)
  assert str(pickle.loads(pickle.dumps(busy))) == str(busy)


def test_library_tracebacks_go_to_the_log_file_not_the_console(tmp_path, capfd):
  console = logging.StreamHandler(sys.stderr)  # What absl or basicConfig installs.
  root = logging.getLogger()
  root.addHandler(console)
  try:
    with logs.capture_logs(str(tmp_path)) as path:
      try:
        raise ValueError("tensorstore says no")
      except ValueError:
        logging.getLogger("absl").exception("a library failed")
      # A dying thread, and an error no caller can receive (as in __del__).
      thread = threading.Thread(target=lambda: 1 / 0, name="worker")
      thread.start()
      thread.join()

      class Broken:
        def __del__(self):
          raise RuntimeError("Event loop is closed")
      Broken()
    logging.getLogger("absl").error("after the block")
  finally:
    root.removeHandler(console)
  err = capfd.readouterr().err
  assert "after the block" in err
  for text in ("tensorstore says no", "ZeroDivisionError", "Event loop is closed"):
    assert text not in err
  log = open(path).read()
  assert "a library failed" in log and "Traceback" in log and "tensorstore says no" in log
  assert "in thread worker" in log and "ZeroDivisionError" in log
  assert "RuntimeError: Event loop is closed" in log
  assert path == str(tmp_path / layout.LOG)


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli, reflected 0x82F63B78), bit by bit: the reference."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def masked(crc: int) -> int:
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_tensorboard_events_are_valid_tfrecords_with_the_scalars(tmp_path):
  import struct
  from tensorboardX.proto import event_pb2
  writer = metrics.MetricsWriter(str(tmp_path))
  writer.write(3, "train", {"loss": 0.5, "finite": True, "note": "nan"})
  writer.close()
  (events,) = (tmp_path / layout.TENSORBOARD).iterdir()
  raw, records = events.read_bytes(), []
  while raw:
    header, header_crc = raw[:8], struct.unpack("<I", raw[8:12])[0]
    (length,) = struct.unpack("<Q", header)
    data, data_crc = raw[12:12 + length], struct.unpack("<I", raw[12 + length:16 + length])[0]
    assert masked(crc32c(header)) == header_crc and masked(crc32c(data)) == data_crc
    records.append(event_pb2.Event.FromString(data))
    raw = raw[16 + length:]
  assert records[0].file_version == "brain.Event:2"
  assert [(e.step, {v.tag: v.simple_value for v in e.summary.value}) for e in records[1:]] == [
      (3, {"train/loss": 0.5, "train/finite": 1.0})]
