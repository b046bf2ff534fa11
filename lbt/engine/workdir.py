"""A run's workdir as the trainer holds it: config.json, one trainer, its log.

A workdir holds everything of a run. Before anything is written the trainer
checks that the workdir is one it may write (`check_location`) and that it
does not hold another config's run (`check_config`); then process 0 holds the
lease for the whole run (`hold`) and library logging goes to the log file.
The study runner uses the same checks for each point's workdir.
"""

import contextlib
import json
import os
from typing import Sequence

import jax

from lbt.io import layout
from lbt.engine import config as config_lib
from lbt.io import files, logs
from lbt.io import lease as lease_lib
from lbt.engine import parallel
from lbt.errors import ConfigError, WorkdirBusy, WriteError



def check_location(workdir: str) -> None:
  """Refuses a workdir lbt cannot write, before anything is created: a local or
  shared-filesystem directory, or gs://BUCKET/DIR (lbt.io.files.check_location)."""
  files.check_location(workdir, "--workdir")


def check_config(config, workdir: str, allow_changes: Sequence[str],
                 allow_flag: str = "--allow_config_change") -> None:
  """Refuses to resume a workdir written by another config, unless allowed.

  `allow_flag` names the flag the refusal suggests, or is empty where the
  command has none (a study: edit the study file back, or use a new directory).
  """
  try:
    text = files.read_text(os.path.join(workdir, layout.CONFIG))
    if text is None:
      return
    old = json.loads(text)
  except (OSError, ValueError) as e:
    raise ConfigError("--workdir", workdir, f"a workdir whose {layout.CONFIG} "
                      f"reads as JSON ({e}); fix or remove that file") from None
  new = json.loads(config.to_json())
  # A field added to lbt after the workdir was written, set to what its
  # absence meant, is no change: older runs and studies still resume.
  for key, value in config_lib.DATASET_DEFAULTS.items():
    old.setdefault("dataset", {}).setdefault(key, value)
  for key, value in config_lib.OPTIONAL_FIELDS.items():
    if key in new:
      old.setdefault(key, value)
  if "adversarial" not in old.get("loss", {}) and "adversarial" in new["loss"]:
    if not new["loss"]["adversarial"].get("enabled", False):
      old.setdefault("loss", {})["adversarial"] = new["loss"]["adversarial"]
  refused = [f for f in config_lib.changed_fields(old, new) if f not in allow_changes]
  if refused:
    remedy = (f"use a new workdir, or resume with {allow_flag}={','.join(refused)}"
              if allow_flag else "restore the point's config in the study file, or "
              "run the study in a new directory")
    raise ConfigError("--workdir", workdir,
                      f"it holds a run of another config (changed: {', '.join(refused)}); "
                      + remedy)


def write_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    files.makedirs(workdir)
    files.write_text_atomic(os.path.join(workdir, layout.CONFIG),
                            config.to_json(indent=2, sort_keys=True))


@contextlib.contextmanager
def hold(workdir: str):
  """One trainer per workdir, library tracebacks to its log file.

  Process 0 holds the workdir's lease (lbt.io.lease.lock) for the whole run;
  the processes agree before anything is written, so a second trainer is
  refused with one line naming the holder. Python logging (orbax's tracebacks
  among it) goes to `lbt.log` in the workdir, not to the console. Yields the
  lease (None on other processes).
  """
  is_main = jax.process_index() == 0
  with contextlib.ExitStack() as stack:
    held, failure = None, None
    if is_main:
      try:
        held = stack.enter_context(lease_lib.lock(workdir, "train"))
      except (WorkdirBusy, WriteError) as e:
        failure = e
    if parallel.any_process(failure is not None):
      raise failure or WorkdirBusy(
          "--workdir", workdir, "a workdir that process 0 could lock (see its error)")
    stack.enter_context(logs.capture_logs(
        workdir, name=layout.process_log(jax.process_index())))
    yield held


def check_lease(held) -> None:
  """Stops (on every process) when another trainer took the workdir over."""
  if parallel.any_process(held is not None and held.lost is not None):
    if held is not None:
      held.check()
    raise WorkdirBusy("--workdir", None, "a workdir this run still holds "
                      "(process 0 lost its lock)")
