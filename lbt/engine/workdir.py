"""A run's workdir as the trainer holds it: config.json and facts.json, one
trainer, its log.

A workdir holds everything of a run. Before anything is written the trainer
checks that the workdir is one it may write (`check_location`), that it does
not hold another config's run (`check_config`), and that the same config
still gives the same facts (`check_facts`: an lbt or a dataset that derives
other numbers from it would resume a run on other terms); then process 0
holds the lease for the whole run (`hold`) and library logging goes to the
log file. The study runner uses the same checks for each point's workdir.
"""

import contextlib
import json
import os
from typing import List, Sequence

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
                 allow_flag: str = "--allow_config_change") -> List[str]:
  """Refuses to resume a workdir written by another config, unless allowed;
  returns the fields that changed as allowed (none for a new workdir).

  `allow_flag` names the flag the refusal suggests, or is empty where the
  command has none (a study: edit the study file back, or use a new directory).
  """
  try:
    text = files.read_text(os.path.join(workdir, layout.CONFIG))
    if text is None:
      return []
    old = json.loads(text)
  except (OSError, ValueError) as e:
    raise ConfigError("--workdir", workdir, f"a workdir whose {layout.CONFIG} "
                      f"reads as JSON ({e}); fix or remove that file") from None
  new = json.loads(config.to_json())
  # A field added to lbt after the workdir was written, set to what its
  # absence meant, is no change: older runs and studies still resume.
  for key, value in config_lib.DATASET_DEFAULTS.items():
    for side in (old, new):  # a config may leave these out, then and now
      side.setdefault("dataset", {}).setdefault(key, value)
  for key, value in config_lib.OPTIONAL_FIELDS.items():
    if key in new:
      old.setdefault(key, value)
  if "adversarial" not in old.get("loss", {}) and "adversarial" in new["loss"]:
    if not new["loss"]["adversarial"].get("enabled", False):
      old.setdefault("loss", {})["adversarial"] = new["loss"]["adversarial"]
  changed = config_lib.changed_fields(old, new)
  refused = [f for f in changed if f not in allow_changes]
  if refused:
    remedy = (f"use a new workdir, or resume with {allow_flag}={','.join(refused)}"
              if allow_flag else "restore the point's config in the study file, or "
              "run the study in a new directory")
    raise ConfigError("--workdir", workdir,
                      f"it holds a run of another config (changed: {', '.join(refused)}); "
                      + remedy)
  return changed


def check_facts(facts: config_lib.RunFacts, workdir: str,
                config_changes: Sequence[str] = ()) -> None:
  """Refuses to resume a workdir whose facts.json says its config gave other
  facts than it gives now (an lbt or a dataset that derives other numbers).

  Facts of the device count (config_lib.DEVICE_FACTS) may differ: a run
  resumes on another count. So may every fact when the config itself changed
  as allowed (`config_changes`, from `check_config`): its facts follow it. A
  workdir without facts.json (a new one, or written before lbt kept it) has
  nothing to compare; the run writes it (`write_facts`).
  """
  path = os.path.join(workdir, layout.FACTS)
  try:
    text = files.read_text(path)
    stored = None if text is None else json.loads(text)
  except (OSError, ValueError) as e:
    raise ConfigError("--workdir", workdir, f"a workdir whose {layout.FACTS} reads as "
                      f"JSON ({e}); fix or remove that file") from None
  if stored is None or config_changes:
    return
  now = facts.to_dict()
  differ = [k for k in sorted(set(stored) & set(now))
            if k not in config_lib.DEVICE_FACTS and stored[k] != now[k]]
  if differ:
    raise ConfigError("--workdir", workdir, "a workdir whose run this config still "
                      "describes, but its facts differ (" + "; ".join(
                          f"{k}: {stored[k]!r} then, {now[k]!r} now" for k in differ)
                      + f"): this lbt or dataset derives other numbers from the same "
                      f"config; use a new workdir, or delete its {layout.FACTS} to "
                      "resume on the new ones")


def write_facts(facts: config_lib.RunFacts, workdir: str) -> None:
  """facts.json beside config.json (whole, atomically), at every start: a
  workdir from before lbt kept it gets it, a resume on another device count
  records its layouts."""
  if jax.process_index() == 0:
    files.makedirs(workdir)
    files.write_text_atomic(os.path.join(workdir, layout.FACTS),
                            json.dumps(facts.to_dict(), indent=2, sort_keys=True))


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
