"""gs:// workdirs, on a fake GCS (tests/support/fake_gcs.py) that refuses local-only calls.

A run writes config.json, metrics.jsonl, TensorBoard events, its log and
checkpoints into the bucket and resumes from them; the lease refuses a second
holder and takes over a stale one; a study writes results.sqlite and its report
into the bucket.
"""

import json
import logging
import os
import sys
import time

import pytest

import fake_gcs
from lbt.io import layout
from tiny_study import run_study
from lbt.engine import checkpoint, train
from lbt.io import metrics, preemption, remote
from lbt.studies import results
from lbt.engine import workdir as workdir_lib
from lbt import errors
from lbt.io import files, logs
from lbt.io import lease as lease_lib
from lbt.errors import ConfigError


@pytest.fixture
def gcs(tmp_path, monkeypatch):
  """The fake bucket tree; also checks no local-only call touched a gs:// path."""
  fake = fake_gcs.FakeGcs(str(tmp_path / "gcs"))
  os.makedirs(fake.local("gs://bucket"))
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)  # Where a C library would make a local "gs:" directory.
  fake_gcs.install(fake, monkeypatch)
  yield fake
  assert not fake.violations, fake.violations
  assert not [n for n in os.listdir(cwd) if n.startswith("gs")], os.listdir(cwd)


def small(make_config, **overrides):
  """The MLP, 8 updates of 128 examples, checkpoints every 4 (as tests/engine/test_train.py)."""
  args = dict(batch_size=128, num_train_steps=8, schedule__warmup_epochs=0.01,
              checkpoint_every_steps=4, log_every_steps=2, eval_every_steps=8,
              eval_batch_size=5000)
  args.update(overrides)
  return make_config("momentum,model=mlp", **args)


def test_guard_refuses_local_calls_on_gs_paths(gcs):
  with pytest.raises(fake_gcs.LocalCall):
    open("gs://bucket/x", "w")
  with pytest.raises(fake_gcs.LocalCall):
    os.path.exists("gs://bucket/x")
  with pytest.raises(fake_gcs.LocalCall):
    os.path.abspath("gs://bucket/x")
  with pytest.raises(OSError, match="appended"):
    files.path("gs://bucket/x").open("a")
  gcs.violations.clear()


def test_the_guard_sees_lbt_code(gcs):
  lbt_code = compile("import os\nos.path.exists('gs://bucket/x')",
                     os.path.join(fake_gcs.REPO, "lbt", "example.py"), "exec")
  with pytest.raises(fake_gcs.LocalCall, match="lbt/example.py"):
    exec(lbt_code)  # pylint: disable=exec-used
  gcs.violations.clear()


def test_run_into_gs_workdir_preempted_and_rerun(make_config, gcs, monkeypatch, capsys):
  workdir = "gs://bucket/runs/mlp"
  config = small(make_config, checkpoint_keep=2)
  with monkeypatch.context() as patch:  # SIGTERM arrives during update 6.
    patch.setattr(preemption.PreemptionNotice, "reached", lambda self, done: done == 6)
    with pytest.raises(errors.Preempted, match="update 6"):
      train.train_and_evaluate(config, workdir)
  local = gcs.local(workdir)
  assert sorted(os.listdir(os.path.join(local, "checkpoints"))) == ["4", "6"]
  assert max(r["step"] for r in metrics.read_jsonl(workdir, "train")) == 6

  # The same command again resumes from update 6.
  summary = train.train_and_evaluate(config, workdir)
  assert "resumed from the checkpoint of update 6" in capsys.readouterr().out
  assert summary["num_train_steps"] == 8
  with open(os.path.join(local, "config.json")) as f:
    assert json.load(f) == json.loads(config.to_json())
  records = metrics.read_jsonl(workdir)
  assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 9))
  assert [r["step"] for r in records if r["kind"] == "run"] == [0, 6]
  assert [r["kind"] for r in records].count("summary") == 1
  events = os.listdir(os.path.join(local, "tensorboard"))
  assert len(events) == 2 and all(e.startswith("events.out.tfevents.") for e in events)
  # Orbax deleted update 4 (checkpoint_keep=2) through google.cloud.storage.
  assert sorted(os.listdir(os.path.join(local, "checkpoints"))) == ["6", "8"]
  assert os.path.exists(os.path.join(local, "lbt.log"))
  assert not os.path.exists(os.path.join(local, layout.LOCK))  # Released.
  assert int(checkpoint.load_state(workdir)["step"]) == 8


def test_gs_workdirs_are_accepted_and_other_schemes_refused(gcs, monkeypatch):
  from lbt import main
  workdir_lib.check_location("gs://bucket/run")
  config_file = os.path.join(fake_gcs.REPO, "configs", "fashion_mnist.py")
  main.parse(["lbt.main", f"--config={config_file}", "--workdir=gs://bucket/run"])
  for bad in ("s3://bucket/run", "gs:///run", "hf://org/model"):
    with pytest.raises(ConfigError, match="--workdir.*gs://BUCKET/DIR"):
      workdir_lib.check_location(bad)
  monkeypatch.setitem(sys.modules, "google.cloud.storage", None)  # Not installed.
  monkeypatch.delattr(sys.modules["google.cloud"], "storage")
  with pytest.raises(ConfigError, match=r"--workdir=.*pip install 'lbt\[gcs\]'"):
    workdir_lib.check_location("gs://bucket/run")


# ---- the lease ----

def foreign_lease(heartbeat):
  """A lease of a process on another host, as its JSON."""
  return json.dumps({"host": "elsewhere", "pid": 4242, "boot_id": "b", "pid_namespace": "n",
                     "pid_start": "1", "purpose": "train", "since": heartbeat,
                     "heartbeat": heartbeat, "token": "theirs"}).encode()


@pytest.mark.parametrize("store", ["gcs", "epath"])
def test_lease_refuses_a_second_holder_and_takes_over_a_stale_one(gcs, store):
  del gcs
  make = {"gcs": lambda: remote.store_for("gs://bucket/x"), "epath": remote.EpathStore}[store]
  assert isinstance(make(), remote.GcsStore if store == "gcs" else remote.EpathStore)
  directory = "gs://bucket/held"
  path = f"{directory}/{layout.LOCK}"

  def lease(timeout_s=60.0):  # Heartbeats by hand only (EpathStore is best effort).
    return lease_lib.RemoteLease(directory, "train", timeout_s, 60.0, "--workdir", store=make())

  first = lease()
  first.acquire()
  try:
    with pytest.raises(errors.WorkdirBusy, match=r"--workdir=.*pid \d+ on host"):
      lease().acquire()
    before = make().read(path)
    assert first.beat() and make().read(path).generation != before.generation
    # Its heartbeat stalls past a taker's timeout: the taker wins, the first stops.
    taker = lease(timeout_s=0.0)
    taker.acquire()
    assert "heartbeat" in taker.took_over
    assert not first.beat() and first.lost["token"] == taker.token
    with pytest.raises(errors.WorkdirBusy, match="lost the lock"):
      first.check()
    taker.release()
  finally:
    first.release()
  assert make().read(path) is None  # Released by its holder; the loser left it alone.

  # A dead holder's lease on another host expires with its heartbeat.
  make().create(path, foreign_lease(time.time()))
  with pytest.raises(errors.WorkdirBusy, match="pid 4242 on host elsewhere"):
    lease().acquire()
  stale = make().read(path)
  assert make().replace(path, foreign_lease(time.time() - 120), stale.generation)
  late = lease()
  late.acquire()
  assert "host elsewhere" in late.took_over and "120 s ago" in late.took_over
  late.release()


def test_gcs_preconditions_make_one_of_two_racers_win(gcs):
  del gcs
  store, path = remote.store_for("gs://bucket/x"), "gs://bucket/race/lbt.lock"
  generation = store.create(path, b"first")
  assert generation and store.create(path, b"second") is None
  newer = store.replace(path, b"third", generation)
  assert newer and store.replace(path, b"late", generation) is None
  assert not store.delete(path, generation) and store.read(path).data == b"third"
  assert store.delete(path, newer) and store.read(path) is None


def test_lock_of_a_gs_workdir_is_reentrant_and_released(gcs):
  del gcs
  with lease_lib.lock("gs://bucket/run", heartbeat_s=0.05) as lease:
    with lease_lib.lock("gs://bucket/run/") as inner:
      assert inner is lease and isinstance(lease, lease_lib.RemoteLease)
    first = json.loads(lease.store.read(lease.path).data)["heartbeat"]
    time.sleep(0.3)
    assert json.loads(lease.store.read(lease.path).data)["heartbeat"] > first
  assert lease.store.read(lease.path) is None


# ---- files that grow, the log, the study database ----

def test_metrics_of_a_gs_workdir_are_rewritten_whole(gcs, monkeypatch):
  workdir = "gs://bucket/metrics"
  writer = metrics.MetricsWriter(workdir)
  writer.write(1, "train", {"loss": 1.0})
  assert metrics.read_jsonl(workdir) == []  # Not yet: at most every TB_FLUSH_SECONDS.
  writer.flush()
  assert [r["step"] for r in metrics.read_jsonl(workdir)] == [1]
  monkeypatch.setattr(metrics, "REMOTE_EVENTS_BYTES", 200)  # A new events file past it.
  for step in range(2, 6):
    writer.write(step, "train", {"loss": 1.0 / step, "accuracy": 0.5})
  writer.close()
  assert [r["step"] for r in metrics.read_jsonl(workdir)] == [1, 2, 3, 4, 5]
  assert len(os.listdir(gcs.local(f"{workdir}/tensorboard"))) >= 2
  # A resumed run drops what came after its checkpoint.
  metrics.MetricsWriter(workdir, resume_step=3).close()
  assert [r["step"] for r in metrics.read_jsonl(workdir)] == [1, 2, 3]


def _event_steps(path):
  """The steps of the summaries in one TFRecord-framed events file."""
  from tensorboardX.proto import event_pb2
  import struct
  with open(path, "rb") as f:
    data = f.read()
  steps, at = [], 0
  while at < len(data):
    (length,) = struct.unpack("<Q", data[at:at + 8])
    event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
    at += 12 + length + 4
    if event.HasField("summary"):
      steps.append(event.step)
  return steps


@pytest.mark.parametrize("where", ["gs", "local"])
def test_a_rerun_in_the_same_second_keeps_the_first_runs_events(gcs, tmp_path, monkeypatch,
                                                                where):
  # A preempted run and its rerun can open their events files within one second;
  # the second must not rewrite the first (a gs:// object cannot be appended to).
  monkeypatch.setattr(metrics.time, "time", lambda: 1_800_000_000.0)
  workdir = "gs://bucket/same-second" if where == "gs" else str(tmp_path / "same-second")
  for step in (1, 2):
    writer = metrics.MetricsWriter(workdir, resume_step=step - 1)
    writer.write(step, "train", {"loss": 1.0})
    writer.close()
  local = gcs.local(workdir) if where == "gs" else workdir
  tb = os.path.join(local, "tensorboard")
  assert sorted(_event_steps(os.path.join(tb, name)) for name in os.listdir(tb)) == [[1], [2]]


def test_log_of_a_gs_workdir_is_copied_up_and_continued(gcs):
  for text in ("first run", "second run"):
    with logs.capture_logs("gs://bucket/logged") as path:
      assert path == "gs://bucket/logged/lbt.log"
      logging.getLogger("orbax").warning(text)
  with open(gcs.local("gs://bucket/logged/lbt.log")) as f:
    log = f.read()
  assert "first run" in log and "second run" in log


def test_study_database_rows_of_two_writers_both_land(gcs, monkeypatch):
  del gcs
  workdir = "gs://bucket/db"
  row = lambda name: {c: None for c in results.COLUMN_NAMES} | {"name": name, "position": 0}
  real_write, raced = results._write_whole, []  # pylint: disable=protected-access

  def write_after_another_shard(local, rows):
    if not raced:  # Another shard writes its row between our read and our write.
      raced.append(True)
      results.write_row(workdir, row("theirs"))
    real_write(local, rows)
  monkeypatch.setattr(results, "_write_whole", write_after_another_shard)
  results.write_row(workdir, row("ours"))  # Its first write fails its precondition.
  assert sorted(r["name"] for r in results.read_database(workdir)) == ["ours", "theirs"]


def test_study_into_a_gs_workdir(make_config, gcs, capsys):
  from lbt import report

  def point(arg, steps):
    config = make_config(arg + ",model=mlp", num_train_steps=steps, eval_every_steps=2,
                         log_every_steps=1, eval_batch_size=5000, schedule__warmup_epochs=0.2)
    config.model.hidden_sizes = (16,)
    return config
  points = {"momentum-b12000": point("momentum,batch=12000", 2),
            "momentum-b6000": point("momentum,batch=6000", 4)}
  workdir = "gs://bucket/study"
  assert run_study(points, workdir) == {n: "finished" for n in points}
  local = gcs.local(workdir)
  assert {"results.sqlite", "study.json", "report", *points} <= set(os.listdir(local))
  rows = results.read_database(workdir)
  assert [r["name"] for r in rows] == list(points)
  assert all(r["status"] == "finished" and r["final_accuracy"] > 0 for r in rows)
  files = os.listdir(os.path.join(local, "report"))
  assert "report.md" in files and "accuracy_vs_batch.png" in files
  with open(os.path.join(local, "report", "report.md")) as f:
    assert f"`{workdir}`" in f.read()
  # Rerun: both points ended, so none is planned; the report command reads the bucket too.
  capsys.readouterr()
  assert run_study(points, workdir) == {}
  assert "momentum-b6000 (" not in capsys.readouterr().out  # Both ended: none planned.
  assert report.main(["lbt.report", workdir]) == 0
  # Plain configs are plain points (no sweep role): the report is read and rebuilt.
  assert f"lbt.report: {workdir}/report/report.md" in capsys.readouterr().out
