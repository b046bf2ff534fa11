"""The per-update train metrics of a run, between the device and metrics.jsonl.

The loop hands each update's metrics over without waiting for them; they are
fetched in blocks (fetching every update would make the host wait on the
device), written one line per update (the full diagnostics only on the updates
that computed them, lbt.engine.step.FULL_DIAGNOSTICS), with the gradient noise scale
where accumulation measured it, and the first non-finite update raises
`Diverged` after its line is on disk.
"""

from typing import Dict

import jax
import numpy as np

from lbt.engine import step
from lbt.stats import noise_scale
from lbt.errors import Diverged


class TrainMetrics:
  """The per-update metrics not yet fetched from the device, written in
  batches (fetching every update would make the host wait on the device)."""

  def __init__(self, run):
    # (metrics, updates, batch, microbatches, full) per dispatch: `updates`
    # None for one update's scalars, else how many leading entries of each
    # metric are updates (lbt.engine.programs.compile_updates), the last one full.
    self.run, self.pending = run, []

  def add(self, metrics, batch: int, count: int, full: bool) -> None:
    self.pending.append((metrics, None, batch, count, full))

  def add_updates(self, metrics, updates: int, batch: int, full_last: bool) -> None:
    """Several updates of one microbatch each, their metrics stacked."""
    self.pending.append((metrics, updates, batch, 1, full_last))

  def wait_for(self, ahead: int) -> None:
    """Waits for the dispatch `ahead` before the last: host memory stays small."""
    if len(self.pending) > ahead:
      jax.block_until_ready(self.pending[-1 - ahead][0])

  def flush(self, done: int) -> None:
    """Writes the buffered updates' metrics; Diverged at a non-finite one."""
    run, pending = self.run, self.pending
    self.pending = []
    if not pending:
      return
    host = jax.device_get([m for m, _, _, _, _ in pending])
    rows = {k: np.concatenate([m[k][None] if n is None else m[k][:n]
                               for m, (_, n, _, _, _) in zip(host, pending)]) for k in host[0]}
    sizes = [1 if n is None else n for _, n, _, _, _ in pending]
    batches = np.repeat([b for _, _, b, _, _ in pending], sizes)
    counts = np.repeat([c for _, _, _, c, _ in pending], sizes)
    full = [f and i == size - 1 for (_, _, _, _, f), size in zip(pending, sizes)
            for i in range(size)]
    first = done - len(full)
    noise = self._noise_scale(rows, batches, counts)
    for i in range(len(rows["loss"])):
      record = {k: v[i] for k, v in rows.items()
                if full[i] or k not in step.FULL_DIAGNOSTICS}
      if run.plan.name != "constant":
        record["batch_size"] = batches[i]
      run.writer.write(first + i + 1, "train", {**record, **noise.get(i, {})})
    bad = np.flatnonzero(~rows["finite"])
    if bad.size:
      self._diverged(first + int(bad[0]) + 1, rows, int(bad[0]))
    run.progress.update(len(rows["loss"]), loss=float(rows["loss"][-1]),
                        lr=float(rows["learning_rate"][-1]))

  def _noise_scale(self, rows, batches, counts) -> Dict[int, Dict[str, float]]:
    """The gradient noise scale, free with accumulation (>= 2 microbatches);
    its moving averages are the plan's, saved with each checkpoint."""
    small_sq_norm = rows.pop("microbatch_grad_sq_norm")
    measured = np.flatnonzero(counts > 1)
    if not measured.size:
      return {}
    grad_sq, trace = zip(*(noise_scale.gradient_noise_scale(
        small_sq_norm[i], rows["grad_norm"][i] ** 2, batches[i] / counts[i], batches[i])
                           for i in measured))
    b_simple = self.run.plan.add_noise_estimates(grad_sq, trace)
    return {i: {"noise_grad_sq": grad_sq[j], "noise_trace": trace[j],
                "b_simple": b_simple[j]} for j, i in enumerate(measured)}

  def _diverged(self, update: int, rows, i: int) -> None:
    run = self.run
    error = Diverged(update, float(rows["loss"][i]), float(rows["grad_norm"][i]),
                     float(rows["learning_rate"][i]), run.manager.latest_step())
    run.writer.write(error.update, "diverged", {
        "loss": error.loss, "grad_norm": error.grad_norm,
        "learning_rate": error.learning_rate,
        "last_checkpoint": -1 if error.last_checkpoint is None else error.last_checkpoint})
    run.writer.flush()
    raise error
