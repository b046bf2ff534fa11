"""Runs an lbt config or study on a Cloud TPU VM slice, from creation to deletion.

  python launch/tpu_pod.py --accelerator=v4-32 --zone=us-central2-b \\
    --workdir=gs://BUCKET/imagenet_limit --data-dir=gs://BUCKET/tensorflow_datasets \\
    --study=configs/studies/imagenet_limit.py:lars+lamb

The steps, each one gcloud command (`--dry-run` prints them all, runs nothing):
  1. create the slice (`tpu-vm create --spot`, or `--queued` for a queued
     resource, which waits for capacity instead of failing), unless a READY
     slice of that name exists already;
  2. copy this checkout (tracked and untracked, not ignored files) to every
     worker and `pip install -e` it with its `gcs` extra (gcsfs,
     google-cloud-storage: the gs:// workdir) and jax[tpu] (`--worker=all`);
  3. start the run on every worker at once, detached: `python3 -m lbt.main` for
     `--config`, `python3 -m lbt.study` for `--study`; every process writes
     ~/lbt.log and its exit code to ~/lbt.rc;
  4. stream process 0's log until it ends, then wait for every worker's code;
  5. build and copy the report (a study) or config.json and metrics.jsonl (a
     config) from the workdir to `--report-dir`;
  6. delete the slice (also on failure; `--keep` keeps it).

Spot flow. A spot slice can be preempted at any time. lbt checkpoints into the
gs:// workdir and saves on SIGTERM, so running the same command again creates a
new slice and resumes every run (and every point of a study) from its last
checkpoint, bit-identically. With `--retries=N` this script does that itself:
when the run fails and the slice is no longer READY, it deletes the slice and
goes back to step 1, at most N times. The workdir must be on gs://: a local
path would die with the slice.

For the pod configs (configs/imagenet_resnet50.py, cifar10_resnet.py and the
imagenet studies) `tpu=<generation>,chips=<devices>` is appended to the config
argument, so the microbatch is derived from the slice's memory.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The generation's runtime image and how many JAX devices "-N" stands for:
# v2/v3 count TensorCores (each a device); v4/v5p count TensorCores, two per
# chip fused into one device (megacore); v5e/v6e count single-core chips.
GENERATIONS = {
    "v2": ("tpu-ubuntu2204-base", 1), "v3": ("tpu-ubuntu2204-base", 1),
    "v4": ("tpu-ubuntu2204-base", 2), "v5p": ("v2-alpha-tpuv5", 2),
    "v5litepod": ("v2-alpha-tpuv5-lite", 1), "v6e": ("v2-alpha-tpuv6e", 1),
}
# lbt's name of a generation in the configs' `tpu=` argument.
CONFIG_TPU = {"v5litepod": "v5e"}
POD_CONFIGS = ("configs/imagenet_resnet50.py", "configs/cifar10_resnet.py",
               "configs/studies/imagenet_limit.py", "configs/studies/imagenet_recipe.py")
LOG, RC, TARBALL = "~/lbt.log", "~/lbt.rc", "lbt.tar.gz"


def parse_accelerator(accelerator: str):
  """'v4-32' -> ('v4', runtime version, JAX devices = 16)."""
  generation, _, size = accelerator.partition("-")
  if generation not in GENERATIONS or not size.isdigit() or int(size) < 1:
    raise SystemExit(f"--accelerator={accelerator!r} is invalid: <generation>-<size> with "
                     f"generation one of {', '.join(GENERATIONS)}, e.g. v4-32 or v3-8")
  runtime, cores_per_device = GENERATIONS[generation]
  return generation, runtime, max(1, int(size) // cores_per_device)


def with_machine(spec: str, generation: str, devices: int) -> str:
  """Appends tpu=/chips= to a pod config's argument unless already given."""
  path, _, arg = spec.partition(":")
  if os.path.normpath(path) not in map(os.path.normpath, POD_CONFIGS) or "chips=" in arg:
    return spec
  machine = f"tpu={CONFIG_TPU.get(generation, generation)},chips={devices}"
  return f"{path}:{arg},{machine}" if arg else f"{path}:{machine}"


class Commands:
  """Every command of one launch, as argument lists (gcloud) or shell lines."""

  def __init__(self, args):
    self.args = args
    self.generation, runtime, self.devices = parse_accelerator(args.accelerator)
    self.version = args.version or runtime
    self.where = [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])

  def gcloud(self, *words: str) -> List[str]:
    return ["gcloud", "compute", "tpus", *words, *self.where]

  def ssh(self, worker: str, command: str) -> List[str]:
    return self.gcloud("tpu-vm", "ssh", self.args.name, f"--worker={worker}",
                       f"--command={command}")

  def describe(self) -> List[str]:
    return self.gcloud("tpu-vm", "describe", self.args.name, "--format=value(state)")

  def create(self) -> List[List[str]]:
    a = self.args
    if a.queued:
      return [self.gcloud("queued-resources", "create", a.name, f"--node-id={a.name}",
                          f"--accelerator-type={a.accelerator}",
                          f"--runtime-version={self.version}", "--spot"),
              # Waits until the queued resource is granted and the node is up.
              ["bash", "-c", "until [ \"$(" + shlex.join(self.gcloud(
                  "queued-resources", "describe", a.name, "--format=value(state.state)"))
               + ")\" = ACTIVE ]; do sleep 30; done"]]
    return [self.gcloud("tpu-vm", "create", a.name, f"--accelerator-type={a.accelerator}",
                        f"--version={self.version}", "--spot")]

  def install(self) -> List[List[str]]:
    local = os.path.join(self.args.tmp_dir, f"{self.args.name}-{TARBALL}")
    jax = f"jax[tpu]=={self.args.jax_version}" if self.args.jax_version else "jax[tpu]"
    return [
        ["bash", "-c", f"cd {shlex.quote(REPO)} && git ls-files -co --exclude-standard -z "
                       f"| tar czf {shlex.quote(local)} --null -T -"],
        self.gcloud("tpu-vm", "scp", local, f"{self.args.name}:{TARBALL}", "--worker=all"),
        self.ssh("all", f"rm -rf ~/lbt && mkdir -p ~/lbt && tar xzf ~/{TARBALL} -C ~/lbt "
                        f"&& python3 -m pip install -q -e ~/lbt'[gcs]' {shlex.quote(jax)}"),
    ]

  def program(self) -> str:
    """The lbt command every worker runs."""
    a = self.args
    if a.study:
      words = ["python3", "-m", "lbt.study",
               f"--study={with_machine(a.study, self.generation, self.devices)}"]
    else:
      words = ["python3", "-m", "lbt.main",
               f"--config={with_machine(a.config, self.generation, self.devices)}"]
    words += [f"--workdir={a.workdir}", *a.extra]
    env = f"LBT_DATA_DIR={shlex.quote(a.data_dir)} " if a.data_dir else ""
    return env + shlex.join(words)

  def run(self) -> List[List[str]]:
    inner = f"{self.program()} > {LOG} 2>&1; echo $? > {RC}"
    start = (f"cd ~/lbt && rm -f {RC} && : > {LOG} && (setsid nohup bash -c {shlex.quote(inner)} "
             f"> /dev/null 2>&1 < /dev/null &)")
    wait = f"while [ ! -e {RC} ]; do sleep 10; done"
    stream = (f"tail -n +1 -F {LOG} & t=$!; {wait}; sleep 2; kill $t; "
              f"exit $(cat {RC})")
    return [self.ssh("all", start), self.ssh("0", stream),
            self.ssh("all", f"{wait}; exit $(cat {RC})")]

  def report(self) -> List[List[str]]:
    a = self.args
    local = os.path.join(a.report_dir, a.name)
    if a.study:
      build = self.ssh("0", "cd ~/lbt && python3 -c " + shlex.quote(
          f"from lbt.reports.study_report import build_report; print(build_report({json.dumps(a.workdir)}))"))
      return [build, ["mkdir", "-p", local],
              ["gcloud", "storage", "cp", "-r", f"{a.workdir}/report", local]]
    return [["mkdir", "-p", local],
            ["gcloud", "storage", "cp", f"{a.workdir}/config.json",
             f"{a.workdir}/metrics.jsonl", local]]

  def delete(self) -> List[List[str]]:
    if self.args.queued:
      return [self.gcloud("queued-resources", "delete", self.args.name, "--force", "--quiet")]
    return [self.gcloud("tpu-vm", "delete", self.args.name, "--quiet")]

  def phases(self) -> Dict[str, List[List[str]]]:
    return {"create": self.create(), "install": self.install(), "run": self.run(),
            "report": self.report(), "delete": self.delete()}


def parse_args(argv: Optional[List[str]] = None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--accelerator", required=True, help="e.g. v3-8, v4-32, v5p-128")
  parser.add_argument("--zone", required=True, help="e.g. us-central2-b (v4)")
  parser.add_argument("--workdir", required=True, help="gs://BUCKET/PATH")
  what = parser.add_mutually_exclusive_group(required=True)
  what.add_argument("--config", help="a config file with its argument, "
                    "e.g. configs/imagenet_resnet50.py:lars,batch=819200")
  what.add_argument("--study", help="a study file with its argument")
  parser.add_argument("--name", default="lbt", help="the slice's name")
  parser.add_argument("--project", default="", help="default: gcloud's project")
  parser.add_argument("--version", default="", help="runtime; default: the generation's")
  parser.add_argument("--data-dir", default="", help="TFDS data dir (LBT_DATA_DIR)")
  parser.add_argument("--queued", action="store_true", help="a queued resource (spot)")
  parser.add_argument("--jax-version", default="", help="pin jax[tpu] on the workers")
  parser.add_argument("--report-dir", default="reports", help="local copy of the report")
  parser.add_argument("--tmp-dir", default="/tmp")
  parser.add_argument("--retries", type=int, default=0,
                      help="recreate a preempted slice and resume, at most this often")
  parser.add_argument("--keep", action="store_true", help="do not delete the slice")
  parser.add_argument("--dry-run", action="store_true", help="print the commands only")
  parser.add_argument("extra", nargs="*", help="after --: flags for lbt.main/lbt.study")
  args = parser.parse_args(argv)
  if not args.workdir.startswith("gs://"):
    parser.error(f"--workdir={args.workdir!r} is invalid: a gs:// path, which outlives "
                 "a preempted slice and which every worker can write")
  return args


def show(command: List[str]) -> str:
  return shlex.join(command)


def execute(command: List[str], check: bool = True) -> int:
  print(f"+ {show(command)}", flush=True)
  code = subprocess.call(command)
  if check and code:
    raise subprocess.CalledProcessError(code, command)
  return code


def slice_state(commands: Commands) -> str:
  result = subprocess.run(commands.describe(), capture_output=True, text=True)
  return result.stdout.strip() if result.returncode == 0 else "ABSENT"


def main(argv: Optional[List[str]] = None) -> int:
  args = parse_args(argv)
  commands = Commands(args)
  phases = commands.phases()
  if args.dry_run:
    print(f"# {args.accelerator}: {commands.devices} JAX devices, runtime {commands.version}")
    print(f"# only when `{show(commands.describe())}` is not READY:")
    for phase, lines in phases.items():
      print(f"# {phase}")
      for command in lines:
        print(show(command))
    return 0
  attempt = 0
  try:
    while True:
      state = slice_state(commands)
      if state != "READY":
        if state != "ABSENT":  # PREEMPTED, TERMINATED, ...: start afresh
          for command in commands.delete():
            execute(command, check=False)
        for command in phases["create"]:
          execute(command)
      for command in phases["install"]:
        execute(command)
      try:
        for command in phases["run"]:
          execute(command)
        break
      except subprocess.CalledProcessError:
        if slice_state(commands) == "READY" or attempt >= args.retries:
          raise
        attempt += 1
        print(f"# the slice was preempted: resuming from {args.workdir} "
              f"(retry {attempt} of {args.retries})", flush=True)
        time.sleep(30)
    for command in phases["report"]:
      execute(command)
    return 0
  except subprocess.CalledProcessError as e:
    print(f"lbt launch failed: {show(e.cmd)} exited {e.returncode}", file=sys.stderr)
    return 1
  finally:
    if not args.keep:
      for command in phases["delete"]:
        execute(command, check=False)


if __name__ == "__main__":
  sys.exit(main())
