"""Where a run's numbers go: metrics.jsonl, TensorBoard, and the console.

Train metrics are produced on device every update and fetched in blocks of
`log_every_steps`, so logging costs no host sync per update; every update still
gets its own line in metrics.jsonl. Only process 0 writes.
"""

import json
import math
import os
from typing import Dict, Iterable, Optional

import jax
import numpy as np
import tqdm

JSONL = "metrics.jsonl"


def _plain(value):
  value = np.asarray(value)
  if value.dtype == np.bool_:
    return bool(value)
  if np.issubdtype(value.dtype, np.integer):
    return int(value)
  value = float(value)
  return value if math.isfinite(value) else str(value)


class MetricsWriter:
  """Appends metrics to metrics.jsonl and TensorBoard events in the workdir."""

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int = 0):
    """Opens the files; a resumed run first drops the records of the updates
    after its checkpoint, which it is about to redo, so each update has one line."""
    self.enabled = enabled
    self._file = self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, JSONL)
      if os.path.exists(path):
        kept = [r for r in read_jsonl(workdir) if r["step"] <= resume_step]
        with open(path + ".tmp", "w") as f:
          f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(path + ".tmp", path)
      self._file = open(path, "a", buffering=1)
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, kind: str, metrics: Dict[str, float]) -> None:
    """One record: `kind` is 'train' or 'eval'; `step` counts updates applied."""
    if not self.enabled:
      return
    record = {"step": int(step), "kind": kind,
              **{k: _plain(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(record) + "\n")
    for key, value in record.items():
      if key not in ("step", "kind") and isinstance(value, (int, float)):
        self._tb.add_scalar(f"{kind}/{key}", value, int(step))

  def flush(self) -> None:
    if self.enabled:
      self._file.flush()
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      self._tb.close()


def read_jsonl(workdir: str, kind: Optional[str] = None) -> list:
  """The records of a workdir's metrics.jsonl (of one kind if given)."""
  path = os.path.join(workdir, JSONL)
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:  # The last line of a killed run, half written.
        continue
  return [r for r in records if kind is None or r["kind"] == kind]


def stack_steps(per_step: Iterable[Dict[str, jax.Array]]) -> Dict[str, np.ndarray]:
  """Device metrics of many updates -> host arrays with one row per update."""
  per_step = list(per_step)
  if not per_step:
    return {}
  host = jax.device_get(per_step)
  return {k: np.stack([m[k] for m in host]) for k in host[0]}


class Progress:
  """A console progress bar with rate and ETA (process 0 only)."""

  def __init__(self, total: int, initial: int, enabled: bool, desc: str = "train"):
    self.bar = tqdm.tqdm(total=total, initial=initial, disable=not enabled,
                         desc=desc, unit="update", dynamic_ncols=True,
                         mininterval=1.0)

  def update(self, n: int, **postfix) -> None:
    self.bar.update(n)
    if postfix:
      self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

  def close(self) -> None:
    self.bar.close()
