"""The TPU-pod launcher: its dry-run commands for a v4-32 and a v3-8, and the
spot flow (a preempted slice is recreated and the run resumed) against a fake
gcloud that records its calls."""

import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCH = os.path.join(REPO, "launch")
sys.path.insert(0, LAUNCH)
import tpu_pod  # noqa: E402  pylint: disable=wrong-import-position


def _dry_run(*flags):
  result = subprocess.run(["bash", os.path.join(LAUNCH, "tpu_pod.sh"), "--dry-run", *flags],
                          capture_output=True, text=True, check=True)
  commands = [shlex.split(line) for line in result.stdout.splitlines()
              if line and not line.startswith("#")]
  return result.stdout, commands


def _find(commands, *words):
  found = [c for c in commands if all(any(w in part for part in c) for w in words)]
  assert found, words
  return found


def test_dry_run_v4_32_study_on_spot():
  text, commands = _dry_run("--accelerator=v4-32", "--zone=us-central2-b", "--name=lbt-v4",
                            "--workdir=gs://bucket/limit", "--data-dir=gs://bucket/tfds",
                            "--study=configs/studies/imagenet_limit.py:lars")
  assert "16 JAX devices" in text  # v4-32 = 32 TensorCores = 16 megacore chips
  create = commands[0]
  assert create[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
  assert {"lbt-v4", "--accelerator-type=v4-32", "--zone=us-central2-b", "--spot",
          "--version=tpu-ubuntu2204-base"} <= set(create)
  # Every gcloud command targets the zone; install and run reach every worker.
  assert all("--zone=us-central2-b" in c for c in commands if c[0] == "gcloud"
             and c[1] == "compute")
  assert "--worker=all" in _find(commands, "scp", "lbt.tar.gz")[0]
  install = _find(commands, "pip install -q -e ~/lbt")[0]
  assert "--worker=all" in install and "jax[tpu]" in install[-2]
  start = _find(commands, "python3 -m lbt.study")[0]
  assert "--worker=all" in start
  program = start[-2]
  assert ("--study=configs/studies/imagenet_limit.py:lars,tpu=v4,chips=16" in program
          and "--workdir=gs://bucket/limit" in program
          and "LBT_DATA_DIR=gs://bucket/tfds" in program)
  stream = _find(commands, "tail -n +1 -F ~/lbt.log")[0]
  assert "--worker=0" in stream
  assert _find(commands, "build_report", "gs://bucket/limit")
  assert _find(commands, "storage", "gs://bucket/limit/report")
  assert commands[-1][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "delete"]
  assert "lbt-v4" in commands[-1] and "--quiet" in commands[-1]


def test_dry_run_v3_8_config_queued():
  text, commands = _dry_run("--accelerator=v3-8", "--zone=europe-west4-a",
                            "--workdir=gs://bucket/run", "--queued", "--project=proj",
                            "--config=configs/imagenet_resnet50.py:lars,batch=819200",
                            "--", "--config.num_train_steps=2")
  assert "8 JAX devices" in text
  create = commands[0]
  assert create[3:5] == ["queued-resources", "create"]
  assert {"--accelerator-type=v3-8", "--zone=europe-west4-a", "--spot",
          "--project=proj", "--runtime-version=tpu-ubuntu2204-base"} <= set(create)
  assert "ACTIVE" in commands[1][-1]  # waits for the queued resource
  program = _find(commands, "python3 -m lbt.main")[0]
  assert "--worker=all" in program
  assert ("--config=configs/imagenet_resnet50.py:lars,batch=819200,tpu=v3,chips=8"
          in program[-3] and "--config.num_train_steps=2" in program[-3])
  assert _find(commands, "storage", "gs://bucket/run/metrics.jsonl")
  assert commands[-1][3:5] == ["queued-resources", "delete"] and "--force" in commands[-1]


@pytest.mark.parametrize("accelerator,generation,devices", [
    ("v2-8", "v2", 8), ("v3-32", "v3", 32), ("v4-8", "v4", 4), ("v5p-128", "v5p", 64),
    ("v5litepod-16", "v5litepod", 16), ("v6e-256", "v6e", 256)])
def test_accelerator_devices(accelerator, generation, devices):
  assert tpu_pod.parse_accelerator(accelerator)[::2] == (generation, devices)


def test_machine_is_appended_only_to_pod_configs():
  assert tpu_pod.with_machine("configs/fashion_mnist.py:lars", "v3", 8) == \
      "configs/fashion_mnist.py:lars"
  assert tpu_pod.with_machine("configs/cifar10_resnet.py", "v5litepod", 8) == \
      "configs/cifar10_resnet.py:tpu=v5e,chips=8"
  assert tpu_pod.with_machine("configs/imagenet_resnet50.py:lars,chips=4", "v4", 8) == \
      "configs/imagenet_resnet50.py:lars,chips=4"


@pytest.mark.parametrize("flags", [
    ["--workdir=/tmp/local"], ["--accelerator=v9-8"], ["--accelerator=v4"]])
def test_bad_flags_exit_before_any_command(flags):
  base = {"--accelerator": "v4-32", "--workdir": "gs://b/r"}
  base.update(dict(f.split("=", 1) if "=" in f else (f, "") for f in flags))
  argv = [f"{k}={v}" for k, v in base.items()] + ["--zone=z", "--config=c.py", "--dry-run"]
  with pytest.raises(SystemExit) as info:
    tpu_pod.main(argv)
  assert info.value.code not in (0, None)


FAKE_GCLOUD = r"""#!/usr/bin/env bash
echo "$*" >> "$FAKE_DIR/calls"
case "$*" in
  *"tpu-vm describe"*) [ -e "$FAKE_DIR/state" ] && cat "$FAKE_DIR/state" || exit 1 ;;
  *"tpu-vm create"*) echo READY > "$FAKE_DIR/state" ;;
  *"tpu-vm delete"*) rm -f "$FAKE_DIR/state" ;;
  *"--worker=0"*"tail -n"*)
    if [ -e "$FAKE_DIR/preempt" ]; then
      rm "$FAKE_DIR/preempt"; echo PREEMPTED > "$FAKE_DIR/state"; exit 255
    fi ;;
esac
exit 0
"""


def test_spot_flow_recreates_a_preempted_slice_and_resumes(tmp_path, monkeypatch):
  fake = tmp_path / "bin"
  fake.mkdir()
  (fake / "gcloud").write_text(FAKE_GCLOUD)
  (fake / "gcloud").chmod(0o755)
  (tmp_path / "preempt").touch()
  monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
  monkeypatch.setenv("FAKE_DIR", str(tmp_path))
  monkeypatch.setattr(tpu_pod.time, "sleep", lambda s: None)
  code = tpu_pod.main(["--accelerator=v4-32", "--zone=z", "--workdir=gs://b/r",
                       "--study=configs/studies/imagenet_limit.py:lars", "--retries=1",
                       f"--report-dir={tmp_path / 'reports'}", f"--tmp-dir={tmp_path}"])
  assert code == 0
  def label(call):
    words = call.split()
    name = " ".join(words[2:4] if words[0] == "compute" else words[:2])
    return name + (" start" if "setsid" in call else "") + (
        " stream" if "tail -n" in call else "")
  calls = [label(c) for c in (tmp_path / "calls").read_text().splitlines()]
  assert calls == [
      "tpu-vm describe", "tpu-vm create", "tpu-vm scp", "tpu-vm ssh",
      "tpu-vm ssh start", "tpu-vm ssh stream",     # preempted while streaming
      "tpu-vm describe",                           # not READY: retry
      "tpu-vm describe", "tpu-vm delete", "tpu-vm create", "tpu-vm scp", "tpu-vm ssh",
      "tpu-vm ssh start", "tpu-vm ssh stream", "tpu-vm ssh",  # the same command resumes
      "tpu-vm ssh",                                # build the report on worker 0
      "storage cp",                                # the report, copied back
      "tpu-vm delete"]
  assert not (tmp_path / "state").exists()  # the slice is gone at the end
