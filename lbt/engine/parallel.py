"""Devices, the mesh and shardings: data parallelism with jit + NamedSharding.

The mesh has one axis, 'data', over every device of every process. Batches are
split along it; parameters and optimizer state are replicated. Collectives
(gradient and BatchNorm means) are inserted by XLA from these shardings, so the
model and the step never name an axis.
"""

import collections
import os
from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> None:
  """Joins the processes of a multi-host run (no-op for a single process).

  With explicit arguments (CPU/GPU clusters, and the localhost test), CPU
  collectives go through gloo. On Cloud TPU, `jax.distributed.initialize()`
  finds its peers from the TPU metadata, so call it with no arguments there.
  """
  if coordinator_address:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
    # A multi-host Cloud TPU VM slice: JAX reads the peers from the metadata.
    jax.distributed.initialize()


def create_mesh(devices: Optional[Sequence] = None) -> Mesh:
  """`devices` (default: all), grouped by process so that each process's part
  of a batch is one contiguous block of it (see `to_global`)."""
  devices = sorted(devices or jax.devices(), key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is true on any (a host sync)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))


def barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (example) axis split over all devices."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_global(local_batch, mesh: Mesh):
  """Assembles each process's part of a batch into global `jax.Array`s.

  The global batch is the concatenation of the processes' parts in process
  order, which is how `lbt.data` slices it.
  """
  sharding = batch_sharding(mesh)
  def one(x):
    global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
    return jax.make_array_from_process_local_data(sharding, x, global_shape)
  return jax.tree.map(one, local_batch)


def emulated_devices(mesh: Mesh) -> bool:
  """Several devices emulated on the host CPU (tests, forced device counts).

  XLA:CPU runs their collectives on one shared thread pool; with many
  programs in flight on few cores a rendezvous can starve past its 40 s
  timeout and abort the process, so callers await each program there.
  """
  return jax.default_backend() == "cpu" and mesh.size > 1


def prefetch_to_mesh(local_batches, mesh: Mesh, count: int, depth: int = 2):
  """Yields `count` batches of `local_batches` as global arrays, `depth` ahead.

  The transfer of batch k + 1 is started before batch k is handed out, so it
  overlaps the (asynchronously dispatched) compute of batch k. Never reads past
  `count`, so the data position stays where the caller expects it.
  """
  queue = collections.deque()
  fetched = 0
  while fetched < count or queue:
    while fetched < count and len(queue) < depth:
      queue.append(to_global(next(local_batches), mesh))
      fetched += 1
    yield queue.popleft()


class MeshInput:
  """A host pipeline's batches as global arrays on `mesh`: the input of a run
  whose data does not stay on the devices (lbt.data.device_input)."""

  def __init__(self, pipeline, mesh: Mesh):
    self.pipeline, self.mesh = pipeline, mesh

  def train_stream(self, plan):
    return self.pipeline.train_stream(plan)

  def microbatches(self, stream, count: int):
    """The next `count` microbatches of `stream`, the next copy started early."""
    return prefetch_to_mesh(stream, self.mesh, count)

  def eval_batches(self):
    return (to_global(b, self.mesh) for b in self.pipeline.eval_batches())

  def validation_batches(self):
    return (to_global(b, self.mesh) for b in self.pipeline.validation_batches())
