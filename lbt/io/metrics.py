"""Where a run's numbers go: metrics.jsonl, TensorBoard, and the console.

Train metrics are produced on device every update and fetched in blocks of
`log_every_steps`, so logging costs no host sync per update; every update still
gets its own line in metrics.jsonl. Only process 0 writes.

Every file is written from the calling thread, so a failed write (disk full,
read-only workdir) surfaces at once as one `lbt.errors.WriteError` naming the
file; what was written before stays. That is why TensorBoard events are framed here
from tensorboardX's protos rather than written by its `SummaryWriter`, whose
writer thread dies on such an error while the trainer blocks on its full queue.

In a remote workdir (gs://), where objects cannot be appended to, both files
are `lbt.io.remote.WholeObject`s: kept whole in memory and rewritten at most every
TB_FLUSH_SECONDS and on flush and close; the TensorBoard events go on in a new
file past REMOTE_EVENTS_BYTES, so that a rewrite stays small.
"""

import json
import math
import os
import socket
import struct
import time
from typing import Dict, Iterable, Optional

import jax
import numpy as np
from tensorboardX.proto import event_pb2, summary_pb2
from tensorboardX import summary as tb_summary
from tensorboardX.record_writer import masked_crc32c
import tqdm

from lbt.io import layout
from lbt.io import files, remote

TB_FLUSH_SECONDS = 10.0
REMOTE_EVENTS_BYTES = 8 << 20


def _plain(value):
  if isinstance(value, str):
    return value
  value = np.asarray(value)
  if value.dtype == np.bool_:
    return bool(value)
  if np.issubdtype(value.dtype, np.integer):
    return int(value)
  value = float(value)
  return value if math.isfinite(value) else str(value)


class _EventFile:
  """TensorBoard scalars in one events file (TFRecord-framed `Event` protos),
  written from the calling thread through a file object this class owns."""

  def __init__(self, directory: str):
    self._directory, self._part = directory, 0
    self._remote = files.is_remote(directory)
    files.path(directory).mkdir(parents=True, exist_ok=True)
    self._open()

  def _open(self) -> None:
    # A resumed run that starts within the second of the last one's file would
    # otherwise rewrite it (a remote object cannot be appended to): the name
    # takes the next free part.
    stamp = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
    while True:
      self.path = os.path.join(self._directory,
                               stamp + (f".{self._part}" if self._part else ""))
      if not files.exists(self.path):
        break
      self._part += 1
    if self._remote:
      self._file = remote.WholeObject(self.path, interval=TB_FLUSH_SECONDS)
    else:
      self._file = open(self.path, "ab")
    self._flushed = time.time()
    self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def _write(self, event) -> None:
    data = event.SerializeToString()
    header = struct.pack("<Q", len(data))
    self._file.write(header + struct.pack("<I", masked_crc32c(header)) + data +
                     struct.pack("<I", masked_crc32c(data)))

  def add(self, step: int, scalars: Dict[str, float]) -> None:
    self.add_summary(step, summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=tag, simple_value=value)
        for tag, value in scalars.items()]))

  def add_summary(self, step: int, summary) -> None:
    self._write(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
    if self._remote and self._file.size > REMOTE_EVENTS_BYTES:
      self._file.close()
      self._part += 1
      self._open()
    if time.time() - self._flushed > TB_FLUSH_SECONDS:
      self.flush()

  def flush(self) -> None:
    self._file.flush()
    self._flushed = time.time()

  def close(self) -> None:
    self._file.close()  # Closed even when writing what was buffered fails.


class MetricsWriter:
  """Appends metrics to metrics.jsonl and TensorBoard events in the workdir.

  Raises `lbt.errors.WriteError` (path and cause) from any method whose
  write fails.
  """

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int = 0):
    """Opens the files; a resumed run first drops the records of the updates
    after its checkpoint, which it is about to redo, so each update has one line."""
    self.enabled = enabled
    self._file = self._tb = None
    if enabled:
      files.makedirs(workdir)
      self.path = os.path.join(workdir, layout.METRICS)
      kept = None
      if files.exists(self.path):
        kept = "".join(json.dumps(r) + "\n" for r in read_jsonl(workdir)
                       if r["step"] <= resume_step)
      with files.writing(self.path):
        if files.is_remote(workdir):
          self._file = remote.WholeObject(self.path, interval=TB_FLUSH_SECONDS)
          if kept is not None:  # Rewritten at once, even when nothing is kept.
            self._file.write(kept)
            self._file.flush()
        else:
          if kept is not None:
            files.write_text_atomic(self.path, kept)
          self._file = open(self.path, "a", buffering=1)
      tb_dir = os.path.join(workdir, layout.TENSORBOARD)
      with files.writing(tb_dir, "the TensorBoard events"):
        self._tb = _EventFile(tb_dir)

  def write(self, step: int, kind: str, metrics: Dict[str, float]) -> None:
    """One record: `kind` is 'train' or 'eval'; `step` counts updates applied."""
    if not self.enabled:
      return
    record = {"step": int(step), "kind": kind,
              **{k: _plain(v) for k, v in metrics.items()}}
    with files.writing(self.path):
      self._file.write(json.dumps(record) + "\n")
    scalars = {f"{kind}/{k}": v for k, v in record.items()
               if k not in ("step", "kind") and isinstance(v, (int, float))}
    if scalars:
      with files.writing(self._tb.path, "the TensorBoard events"):
        self._tb.add(int(step), scalars)

  def flush(self) -> None:
    if self.enabled:
      with files.writing(self.path):
        self._file.flush()
      with files.writing(self._tb.path, "the TensorBoard events"):
        self._tb.flush()

  def close(self) -> None:
    """Closes both files; a failure to write what was buffered raises after
    both are closed."""
    if not self.enabled or self._file is None:
      return
    file, tb, self._file, self._tb = self._file, self._tb, None, None
    try:
      with files.writing(self.path):
        file.close()
    finally:
      with files.writing(tb.path, "the TensorBoard events"):
        tb.close()


def read_jsonl(workdir: str, kind: Optional[str] = None) -> list:
  """The records of a workdir's metrics.jsonl (of one kind if given)."""
  text = files.read_text(os.path.join(workdir, layout.METRICS))
  records = []
  for line in (text or "").splitlines():
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

  def set_total(self, total: int) -> None:
    """A new estimate of the run's updates (a batch that follows the noise scale)."""
    if total != self.bar.total:
      self.bar.total = total
      self.bar.refresh()

  def update(self, n: int, **postfix) -> None:
    self.bar.update(n)
    if postfix:
      self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

  def close(self) -> None:
    self.bar.close()


def write_hparams(workdir: str, hparams: Dict[str, object], scores: Dict[str, float]) -> None:
  """One run's hyperparameters and final scores for TensorBoard's HParams
  dashboard, as an events file of its own in the run's TensorBoard folder: a
  study directory opened in TensorBoard then lists every search's trials
  (learning rate and cell against the validation and test metrics)."""
  values = {k: v for k, v in hparams.items() if isinstance(v, (bool, int, float, str))}
  tags = {f"hparams/{k}": float(v) for k, v in scores.items()
          if v is not None and math.isfinite(v)}
  experiment, start, end = tb_summary.hparams(values, tags)
  events = _EventFile(os.path.join(workdir, layout.TENSORBOARD, layout.HPARAMS))
  try:
    for summary in (experiment, start, end):
      events.add_summary(0, summary)
    events.add(0, tags)
  finally:
    events.close()
