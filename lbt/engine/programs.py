"""The jitted, sharded programs of a run: the model, the update and evaluation.

`compile_update` turns the pure step (lbt.engine.step) into the programs one update
runs on the mesh: one fused program for a batch of one microbatch, else a host
loop of start / add-each-microbatch / finish, with the accumulator donated.
`compile_updates` runs several updates in one dispatch on data held on the
devices. `compile_eval` and `evaluate` count every example of a split once.
`kept` keeps a run's schedule-free programs for the next run of the process.
"""

import collections
import contextlib
import functools
import json
import os
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from lbt.data import device_input
from lbt.engine import config as config_lib
from lbt import models, optim
from lbt.engine import parallel, step

# Microbatches (and updates) the host may dispatch ahead of the device: enough
# to overlap the next transfer with the compute, few enough that host and
# device memory stay those of a few microbatches, whatever the batch.
IN_FLIGHT = 2
# Updates one dispatch may run on data held on the devices (compile_updates):
# at most CHUNK_UPDATES, and their indices at most CHUNK_EXAMPLES.
CHUNK_UPDATES, CHUNK_EXAMPLES = 64, 1 << 16


# Programs kept for the next runs of the process (`kept`), at most this many.
KEPT_PROGRAMS = 32
_kept: "collections.OrderedDict[Any, Any]" = collections.OrderedDict()


def kept(key, build: Callable[[], Any]) -> Any:
  """`build()`, or what it returned for `key` earlier in this process (key
  None: built each time).

  A study runs its points one after another in one process; those of one
  model, optimizer, loss and mesh (their key: lbt.engine.train names it) run
  the same programs, which kept are neither traced nor loaded again.
  """
  if key is None:
    return build()
  program = _kept.pop(key) if key in _kept else build()
  _kept[key] = program  # the most recently used last
  while len(_kept) > KEPT_PROGRAMS:
    _kept.popitem(last=False)
  return program


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
                   gradient_penalty: Optional[Dict[str, Any]] = None,
                   key: Any = None) -> Callable:
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
  `key` names the model, optimizer and loss for `kept` (None: not kept).
  """
  def learning_rate_at(position):
    return schedule(position)

  learning_rate = jax.jit(learning_rate_at, out_shardings=parallel.replicated(mesh))
  fused, start_fn, add_fn, finish_fn = kept(
      key and ("update", key, mesh), lambda: _update_programs(
          model, tx, mesh, label_smoothing, needs, adversarial, gradient_penalty))
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


def _update_programs(model, tx, mesh, label_smoothing, needs, adversarial, gradient_penalty):
  """The schedule-free programs of `compile_update`: fused, start, add, finish."""
  replicated, sharded = parallel.replicated(mesh), parallel.batch_sharding(mesh)
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
  return fused, start_fn, add_fn, finish_fn


def chunk_length(batch: int) -> int:
  """The most updates of `batch` one dispatch of `compile_updates` runs: up
  to CHUNK_UPDATES, fewer as the batch grows (their indices travel with them)."""
  return max(1, min(CHUNK_UPDATES, CHUNK_EXAMPLES // batch))


def compile_updates(model, tx, schedule, mesh, batch: int, label_smoothing: float,
                    needs: Sequence[str] = (),
                    adversarial: Optional[Dict[str, Any]] = None,
                    gradient_penalty: Optional[Dict[str, Any]] = None,
                    key: Any = None) -> Callable:
  """Several updates of one batch in one dispatch, for data held on the
  devices (lbt.data.device_input): `updates(state, data, indices, positions,
  full_last, params_init) -> (state, metrics)` runs one update per row of
  `indices` (each row a whole batch, no padding), at schedule `positions`,
  the last with FULL_DIAGNOSTICS when `full_last`; each metric comes back
  with one entry per update.

  Each update is `compile_update`'s fused step on the batch `device_input`
  gathers, in a loop on the device: the same arithmetic, so the same state
  to the bit, without a dispatch (and the host's work around it) per update.
  The learning rates come from the schedule's own program, mapped over the
  positions. Fewer rows than `chunk_length(batch)` run one program: the rows
  are padded and the loop stops at the real ones.
  """
  length = chunk_length(batch)
  rates = jax.jit(jax.vmap(schedule), out_shardings=parallel.replicated(mesh))
  program = kept(key and ("updates", key, mesh, batch), lambda: _updates_program(
      model, tx, mesh, length, label_smoothing, needs, adversarial, gradient_penalty))

  def updates(state, data, indices, positions, full_last, params_init):
    count = len(indices)
    padded = np.zeros((length, batch), np.int32)
    padded[:count] = indices
    at = np.full(length, positions[-1], np.float32)
    at[:count] = positions
    full = np.zeros(length, bool)
    full[count - 1] = full_last
    return program(state, data.train, data.table, padded, rates(at), full, params_init,
                   np.int32(count))

  updates.programs = {"updates": program, "learning_rates": rates}
  updates.length = length
  return updates


def _updates_program(model, tx, mesh, length, label_smoothing, needs, adversarial,
                     gradient_penalty):
  """`compile_updates`'s schedule-free program."""
  replicated, sharded = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  one = functools.partial(step.train_step, apply_fn=model.apply, tx=tx,
                          label_smoothing=label_smoothing, needs=needs,
                          adversarial=adversarial, gradient_penalty=gradient_penalty)

  def run(state, split, table, indices, learning_rates, full, params_init, count):
    def update(k, state):
      examples = jax.lax.with_sharding_constraint(
          device_input.gather(split, table, indices[k]), sharded)
      return one(state, examples, params_init, learning_rates[k], full[k])

    shapes = jax.eval_shape(update, 0, state)[1]
    def body(k, carry):
      state, metrics = update(k, carry[0])
      return state, jax.tree.map(lambda all_, m: all_.at[k].set(m), carry[1], metrics)

    empty = jax.tree.map(lambda s: jnp.zeros((length,) + s.shape, s.dtype), shapes)
    return jax.lax.fori_loop(0, count, body, (state, empty))

  rows = NamedSharding(mesh, P(None, parallel.DATA_AXIS))
  return jax.jit(run, in_shardings=(replicated,) * 3 + (rows,) + (replicated,) * 4,
                 out_shardings=(replicated, replicated), donate_argnums=(0,))


def compile_eval(model, mesh, key: Any = None) -> Callable:
  """The jitted eval step: summed loss, correct predictions and count of a
  batch (`key`: the model's, for `kept`)."""
  return kept(key and ("eval", key, mesh), lambda: jax.jit(
      functools.partial(step.eval_step, apply_fn=model.apply),
      in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
      out_shardings=parallel.replicated(mesh)))


def evaluate(eval_fn, state, batches) -> Dict[str, float]:
  """Loss and accuracy over every example of `batches` (global arrays), each
  counted once."""
  totals = None
  for batch in batches:
    sums = eval_fn(state, batch)
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


def program_key(config, facts) -> str:
  """What the schedule-free programs of a run depend on, for
  `kept`: the model (and its BatchNorm), the optimizer but its
  learning rate (the schedule's input), the loss and the input's shape."""
  optimizer = {k: v for k, v in config.optimizer.to_dict().items() if k != "learning_rate"}
  return json.dumps({
      "model": config.model.to_dict(), "bn": config.bn.to_dict(), "optimizer": optimizer,
      "label_smoothing": config.loss.label_smoothing, "adversarial": facts.adversarial,
      "gradient_penalty": facts.gradient_penalty, "classes": facts.num_classes,
      "dataset": config.dataset.name,
      "image_size": config_lib.dataset_field(config, "image_size")},
                    sort_keys=True, default=str)


def updates_where_they_apply(config, facts, source, plan, model, tx, schedule, mesh, key):
  """The program of several updates a dispatch where it applies: data held
  on the devices, one batch throughout, each update one unpadded microbatch;
  else None (one dispatch an update)."""
  if not isinstance(source, device_input.DeviceData) or plan.name != "constant" or (
      source.pipeline.train_batches.layout(plan.batch) != (1, plan.batch, False)):
    return None
  if chunk_length(plan.batch) < 2:  # One update a dispatch anyway: the plain
    return None  # step's program (a loop of one compiled otherwise drifted in the 5th digit).
  return compile_updates(
      model, tx, schedule, mesh, plan.batch, config.loss.label_smoothing,
      needs=optim.needs(config.optimizer), adversarial=facts.adversarial,
      gradient_penalty=facts.gradient_penalty, key=key)


def initial_state(config, facts, pipeline, mesh, model, tx, key):
  """The train state at initialization, created already replicated over the
  mesh: the model's variables and the optimizer's state are two programs, so
  that points of one model share the first; both kept for the next run of
  the process with the same `key` (`kept`)."""
  input_shape = (pipeline.image_size, pipeline.image_size, pipeline.spec.image_shape[2])
  adversarial, replicated = facts.adversarial, parallel.replicated(mesh)
  keep_previous = bool(adversarial) and adversarial["parameters"] == "stale"
  init_variables = kept(("variables", key, mesh), lambda: jax.jit(
      functools.partial(step.init_variables, model=model, input_shape=input_shape),
      out_shardings=replicated))
  init_state = kept(("state", key, mesh), lambda: jax.jit(
      functools.partial(step.state_from_variables, tx=tx, keep_previous_params=keep_previous),
      out_shardings=replicated))
  return init_state(*init_variables(jax.random.PRNGKey(config.seed)))
