"""Checkpoints of a run: the train state and the data position, through orbax.

Each checkpoint holds the TrainState (every process writes its shards) and the
grain iterator's state (the index of the next update). Orbax writes each step
into a temporary directory and renames it when complete, so a kill -9 during a
save leaves the previous checkpoints as they were. A checkpoint that is damaged
anyway (a truncated or deleted file) fails to restore; `restore` then falls
back to the newest older one that restores, and says which it skipped.
"""

import logging
import os
from typing import Any, Optional, Tuple

import grain
import jax
import orbax.checkpoint as ocp

STATE, DATA = "state", "data"


def create_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=False,
      cleanup_tmp_directories=True)
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"), options=options,
      item_handlers={STATE: ocp.StandardCheckpointHandler(),
                     DATA: grain.checkpoint.CheckpointHandler()})


class CheckpointRestoreError(RuntimeError):
  """Checkpoints exist but none of them restores into this config's state."""


class CheckpointSaveError(RuntimeError):
  """A save failed (e.g. disk full); the earlier checkpoints are intact."""


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         data_iterator) -> None:
  """Saves synchronously; raises CheckpointSaveError naming the cause."""
  if step in manager.all_steps():
    return
  try:
    manager.save(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(state),
        DATA: grain.checkpoint.CheckpointSave(data_iterator)}), force=True)
    manager.wait_until_finished()
  except Exception as e:  # OSError from Python, others from tensorstore.
    kept = [s for s in manager.all_steps() if s != step]
    reason = getattr(e, "strerror", None) or str(e).splitlines()[0][:200]
    raise CheckpointSaveError(
        f"could not write the checkpoint of update {step} ({reason}); the last "
        f"complete checkpoint is update {max(kept) if kept else 'none'}") from None


def restore(manager: ocp.CheckpointManager, abstract_state: Any,
            data_iterator) -> Optional[Tuple[Any, int]]:
  """Restores the newest checkpoint that restores cleanly, or None if none.

  Args:
    manager: of the run's workdir.
    abstract_state: `jax.ShapeDtypeStruct`s with shardings, from
      `jax.eval_shape`, saying where each restored array lives.
    data_iterator: a fresh grain iterator; its position is set in place.

  Returns:
    (state, step) or None when the workdir has no checkpoint.

  Raises:
    CheckpointRestoreError: there are checkpoints but none restores (another
      model's, or all damaged); starting over silently would lose the run.
  """
  failures = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(step, args=ocp.args.Composite(**{
          STATE: ocp.args.StandardRestore(abstract_state),
          DATA: grain.checkpoint.CheckpointRestore(data_iterator)}))
    except Exception as e:  # Orbax/tensorstore raise many types on bad files.
      reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
      logging.warning("Checkpoint of update %d does not restore (%s).", step, reason)
      print(f"lbt: checkpoint of update {step} does not restore "
            f"({type(e).__name__}); trying the previous one.", flush=True)
      failures.append((step, reason))
      continue
    # The run will pass the damaged steps again: make room for fresh saves.
    for damaged, _ in failures:
      manager.delete(damaged)
    return restored[STATE], step
  if failures:
    raise CheckpointRestoreError(
        f"no checkpoint in {manager.directory} restores for this config "
        f"({'; '.join(f'update {s}: {r[:80]}' for s, r in failures)})")
  return None


def abstract(state: Any) -> Any:
  """Shapes, dtypes and shardings of a state, without its values."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def load_state(workdir: str, step: Optional[int] = None) -> Any:
  """A checkpointed TrainState as a tree of host numpy arrays (for analysis).

  Args:
    workdir: the run's workdir.
    step: the update of the checkpoint; the newest when None.
  """
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      read_only=True), item_handlers={STATE: ocp.StandardCheckpointHandler()}) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {directory}")
    # Place every array on one local device, whatever mesh wrote it.
    metadata = manager.item_metadata(step)[STATE]
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
    return manager.restore(step, args=ocp.args.Composite(
        **{STATE: ocp.args.StandardRestore(target)}))[STATE]
