"""Where each update's examples sit in the data: the pieces the input
pipeline and the batch plan (lbt.engine.batch_schedule) both need, kept in
the data layer so that the pipeline never imports the engine."""

import math
from typing import NamedTuple, Tuple


def microbatch_layout(batch: int, micro: int, num_devices: int,
                      split: bool = False) -> Tuple[int, int]:
  """(microbatches per update, examples per microbatch as padded).

  ceil(batch / micro) microbatches hold ceil or floor of batch / n real
  examples each; each is padded with masked examples up to a multiple of the
  device count, so that any batch (1,281,167 is prime) runs on any slice and
  its gradient is still the mean over exactly its real examples. With `split`
  (noise_scale_split in the config), a batch that would be one microbatch is two, so
  that the gradient noise scale can be measured from the two halves.
  """
  n = math.ceil(batch / micro)
  if split and n == 1 and batch >= 2:
    n = 2
  return n, math.ceil(math.ceil(batch / n) / num_devices) * num_devices


class Slot(NamedTuple):
  """One update's place in the data: its batch and where its examples start."""
  update: int
  batch: int
  epoch: int
  offset: int
  epochs_done: float  # epochs trained before this update
