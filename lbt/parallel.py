"""Devices, the mesh and shardings: data parallelism with jit + NamedSharding.

The mesh has one axis, 'data', over every device of every process. Batches are
split along it; parameters and optimizer state are replicated. Collectives
(gradient and BatchNorm means) are inserted by XLA from these shardings, so the
model and the step never name an axis.
"""

import os
from typing import Optional

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


def create_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


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
