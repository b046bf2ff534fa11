"""The jitted, sharded programs of a run: the model, the update and evaluation.

`compile_update` turns the pure step (lbt.engine.step) into the programs one update
runs on the mesh: one fused program for a batch of one microbatch, else a host
loop of start / add-each-microbatch / finish, with the accumulator donated.
`compile_eval` and `evaluate` count every example of a split once.
"""

import collections
import contextlib
import functools
import os
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache
import jax.numpy as jnp

from lbt.engine import config as config_lib
from lbt import models
from lbt.engine import parallel, step

# Microbatches (and updates) the host may dispatch ahead of the device: enough
# to overlap the next transfer with the compute, few enough that host and
# device memory stay those of a few microbatches, whatever the batch.
IN_FLIGHT = 2


def build_model(config, num_classes: int):
  return models.create(config.model.name, num_classes=num_classes,
                       ghost_size=config.bn.ghost_size,
                       dtype=jnp.dtype(config.model.dtype),
                       **config_lib.model_options(config))


def dispatch_ahead(mesh) -> int:
  """How many programs the host may run ahead of the device (IN_FLIGHT; none
  on emulated CPU devices, whose collectives starve when many are queued)."""
  return 0 if parallel.emulated_devices(mesh) else IN_FLIGHT


def compile_update(model, tx, schedule, mesh, num_microbatches: int,
                   label_smoothing: float, needs: Sequence[str] = (),
                   adversarial: Optional[Dict[str, Any]] = None,
                   gradient_penalty: Optional[Dict[str, Any]] = None) -> Callable:
  """The jitted update: `update(state, microbatches, params_init, lr_position,
  num_microbatches=<this>, full_diagnostics=True) -> (state, metrics)`
  (`lr_position`: where on the schedule this update's learning rate is;
  `full_diagnostics`: whether the metrics hold `step.FULL_DIAGNOSTICS`).

  The schedule is a program of its own whose result the update takes as an
  input, and `full_diagnostics` is a traced flag: the update's programs hold
  no learning rate, warmup or decay length and no logging period, so the
  points of a study that differ only in those compile them once (then load
  them from the persistent compilation cache: `compilation_cache`).

  `microbatches` yields the update's global microbatches. One microbatch is a
  single fused step. Several are streamed through a host loop of jitted calls
  (start, add each microbatch into a donated float32 sum, finish): only one
  microbatch is ever on the device, the host never waits on a device value
  inside an update, and the compiled programs are the one-shot step's own
  (a `lax.scan` body got slower convolution layouts on XLA:CPU; see
  benchmarks/accumulation.py). A run whose batch changes passes each update's
  `num_microbatches`: the programs compile once per microbatch shape, and the
  finish once per count only for optimizers that read the count (GSNR). A
  `gradient_penalty` (lbt.engine.regularizers) enters every microbatch.
  """
  replicated, sharded = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  def learning_rate_at(position):
    return schedule(position)

  learning_rate = jax.jit(learning_rate_at, out_shardings=replicated)
  add = functools.partial(step.add_microbatch, apply_fn=model.apply,
                          label_smoothing=label_smoothing, adversarial=adversarial,
                          gradient_penalty=gradient_penalty)
  fused = jax.jit(functools.partial(step.train_step, apply_fn=model.apply, tx=tx,
                                    label_smoothing=label_smoothing,
                                    needs=needs, adversarial=adversarial,
                                    gradient_penalty=gradient_penalty),
                  in_shardings=(replicated, sharded, replicated, replicated, replicated),
                  out_shardings=(replicated, replicated), donate_argnums=(0,))
  start_fn = jax.jit(functools.partial(step.start_update, needs=needs,
                                       gradient_penalty=gradient_penalty),
                     out_shardings=replicated)
  # `add` also returns its microbatch count, a scalar the host can wait on
  # (the sums themselves are donated to the next call).
  def add_microbatch(state, sums, microbatch):
    sums = add(state, sums, microbatch)
    return sums, sums.microbatches

  add_fn = jax.jit(add_microbatch, in_shardings=(replicated, replicated, sharded),
                   out_shardings=replicated, donate_argnums=(1,))
  def finish_update(state, sums, params_init, lr, full_diagnostics, num_microbatches):
    return step.finish_update(state, sums, params_init, lr, full_diagnostics, tx=tx,
                              num_microbatches=num_microbatches,
                              gradient_penalty=gradient_penalty)

  finish_fn = jax.jit(finish_update, in_shardings=(replicated,) * 5,
                      out_shardings=(replicated, replicated), static_argnums=(5,),
                      donate_argnums=(0,))
  counts_matter, ahead, default_count = ("microbatch_grad_sq" in needs,
                                         dispatch_ahead(mesh), num_microbatches)

  def update(state, microbatches, params_init, lr_position,
             num_microbatches=default_count, full_diagnostics=True):
    lr, full = learning_rate(lr_position), bool(full_diagnostics)
    if num_microbatches == 1:
      return fused(state, next(iter(microbatches)), params_init, lr, full)
    sums, dispatched = start_fn(state), collections.deque()
    for microbatch in microbatches:
      sums, done = add_fn(state, sums, microbatch)
      dispatched.append(done)
      if len(dispatched) > ahead:  # Memory stays that of a few microbatches.
        jax.block_until_ready(dispatched.popleft())
    # Static, so passed only where read: other optimizers compile one finish.
    return finish_fn(state, sums, params_init, lr, full,
                     num_microbatches if counts_matter else 1)

  update.programs = {"start": start_fn, "add": add_fn, "finish": finish_fn, "fused": fused,
                     "learning_rate": learning_rate}
  return update


def compile_eval(model, mesh) -> Callable:
  """The jitted eval step: summed loss, correct predictions and count of a batch."""
  return jax.jit(functools.partial(step.eval_step, apply_fn=model.apply),
                 in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
                 out_shardings=parallel.replicated(mesh))


def evaluate(eval_fn, state, batches, mesh) -> Dict[str, float]:
  """Loss and accuracy over every example of `batches`, each counted once."""
  totals = None
  for local in batches:
    sums = eval_fn(state, parallel.to_global(local, mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = float(totals["count"])
  return {"loss": float(totals["loss_sum"]) / count,
          "accuracy": float(totals["correct"]) / count, "count": int(count)}


@contextlib.contextmanager
def compilation_cache(path: Optional[str]) -> Iterator[Optional[str]]:
  """JAX's persistent compilation cache in `path` for the programs compiled
  inside; yields the directory used (None: no cache).

  Points whose programs are the same (one model, batch and optimizer; the
  learning rate and schedule are inputs) then compile them once, and a rerun,
  another shard or the next study on the directory starts warm. Every program
  is kept, however fast its compile (JAX's default keeps those over 1 s; a
  small model's take 0.1 to 1 s, and a study compiles hundreds). A cache the
  user configured (JAX_COMPILATION_CACHE_DIR) is used as it is. A damaged or
  unwritable entry costs a compile, never the run (JAX only warns).
  """
  user = jax.config.jax_compilation_cache_dir
  if user or not path:
    yield user or None
    return
  os.makedirs(path, exist_ok=True)
  minimum = jax.config.jax_persistent_cache_min_compile_time_secs
  jax_cache.reset_cache()  # JAX opens its cache once per process, at first use.
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  try:
    yield path
  finally:
    jax_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", minimum)
