"""The training loop: config -> data -> model -> optimizer -> sharded step.

`train_and_evaluate` is the only place that does I/O: it reads batches, runs
the jitted step, writes metrics and checkpoints, and evaluates. Everything it
calls is a pure function of the config and of the stage before it.
"""

import collections
import contextlib
import functools
import json
import os
import time
from typing import Any, Callable, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lbt import batch_schedule, checkpoint, data, diagnostics
from lbt import metrics as metrics_lib, models, optim, parallel, step
from lbt.preemption import PreemptionNotice, Preempted
from lbt import config as config_lib
from lbt import workdir as workdir_lib
from lbt.errors import ConfigError

CONFIG_JSON = "config.json"
# Microbatches (and updates) the host may dispatch ahead of the device: enough
# to overlap the next transfer with the compute, few enough that host and
# device memory stay those of a few microbatches, whatever the batch.
IN_FLIGHT = 2


class Diverged(RuntimeError):
  """A non-finite loss, gradient or parameter appeared; the run stopped."""

  def __init__(self, update: int, loss: float, grad_norm: float,
               learning_rate: float, last_checkpoint):
    self.update, self.loss, self.learning_rate = update, loss, learning_rate
    self.grad_norm, self.last_checkpoint = grad_norm, last_checkpoint
    super().__init__(
        f"training diverged at update {update}: loss={loss:.6g}, "
        f"grad_norm={grad_norm:.6g}, learning_rate={learning_rate:.6g}; "
        "the state before it is not saved; the last good checkpoint is "
        f"{'update ' + str(last_checkpoint) if last_checkpoint is not None else 'none'}")


def check_workdir_location(workdir: str) -> None:
  """Refuses a workdir lbt cannot write, before anything is created: a local or
  shared-filesystem directory, or gs://BUCKET/DIR (lbt.workdir.check_location)."""
  workdir_lib.check_location(workdir, "--workdir")


def check_workdir_config(config, workdir: str, allow_changes: Sequence[str]) -> None:
  """Refuses to resume a workdir written by another config, unless allowed."""
  try:
    text = workdir_lib.read_text(os.path.join(workdir, CONFIG_JSON))
    if text is None:
      return
    old = json.loads(text)
  except (OSError, ValueError) as e:
    raise ConfigError("--workdir", workdir, f"a workdir whose {CONFIG_JSON} "
                      f"reads as JSON ({e}); fix or remove that file") from None
  new = json.loads(config.to_json())
  # A field added to lbt after the workdir was written, set to what its
  # absence meant, is no change: older runs and studies still resume.
  for key, value in config_lib.DATASET_DEFAULTS.items():
    old.setdefault("dataset", {}).setdefault(key, value)
  for key, value in config_lib.OPTIONAL_FIELDS.items():
    if key in new:
      old.setdefault(key, value)
  if "adversarial" not in old.get("loss", {}) and adversarial_section(config) is None:
    old.setdefault("loss", {})["adversarial"] = new["loss"].get("adversarial")
  changed = config_lib.changed_fields(old, new)
  refused = [f for f in changed if f not in allow_changes]
  if refused:
    raise ConfigError("--workdir", workdir,
                      f"it holds a run of another config (changed: {', '.join(refused)}); "
                      "use a new workdir, or resume with "
                      f"--allow_config_change={','.join(refused)}")


def write_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    workdir_lib.makedirs(workdir)
    workdir_lib.write_text_atomic(os.path.join(workdir, CONFIG_JSON),
                                  config.to_json(indent=2, sort_keys=True))


@contextlib.contextmanager
def hold_workdir(workdir: str):
  """One trainer per workdir, library tracebacks to its log file.

  Process 0 holds the workdir's lease (lbt.workdir.lock) for the whole run;
  the processes agree before anything is written, so a second trainer is
  refused with one line naming the holder. Python logging (orbax's tracebacks
  among it) goes to `lbt.log` in the workdir, not to the console. Yields the
  lease (None on other processes).
  """
  is_main = jax.process_index() == 0
  with contextlib.ExitStack() as stack:
    lease, failure = None, None
    if is_main:
      try:
        lease = stack.enter_context(workdir_lib.lock(workdir, "train"))
      except (workdir_lib.WorkdirBusy, workdir_lib.WriteError) as e:
        failure = e
    if parallel.any_process(failure is not None):
      raise failure or workdir_lib.WorkdirBusy(
          "--workdir", workdir, "a workdir that process 0 could lock (see its error)")
    stack.enter_context(workdir_lib.capture_logs(
        workdir, name="lbt.log" if is_main else f"lbt.process_{jax.process_index()}.log"))
    yield lease


def check_lease(lease) -> None:
  """Stops (on every process) when another trainer took the workdir over."""
  if parallel.any_process(lease is not None and lease.lost is not None):
    if lease is not None:
      lease.check()
    raise workdir_lib.WorkdirBusy("--workdir", None, "a workdir this run still holds "
                                  "(process 0 lost its lock)")


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
                   adversarial: Optional[Dict[str, Any]] = None) -> Callable:
  """The jitted update: `update(state, microbatches, params_init, lr_position=None,
  num_microbatches=<this>) -> (state, metrics)` (`lr_position`: see
  `step.finish_update`).

  `microbatches` yields the update's global microbatches. One microbatch is a
  single fused step. Several are streamed through a host loop of jitted calls
  (start, add each microbatch into a donated float32 sum, finish): only one
  microbatch is ever on the device, the host never waits on a device value
  inside an update, and the compiled programs are the one-shot step's own
  (a `lax.scan` body got slower convolution layouts on XLA:CPU; see
  benchmarks/accumulation.py). A run whose batch changes passes each update's
  `num_microbatches`: the programs compile once per microbatch shape, and the
  finish once per count only for optimizers that read the count (GSNR).
  """
  replicated, sharded = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  add = functools.partial(step.add_microbatch, apply_fn=model.apply,
                          label_smoothing=label_smoothing, adversarial=adversarial)
  fused = jax.jit(functools.partial(step.train_step, apply_fn=model.apply, tx=tx,
                                    schedule=schedule, label_smoothing=label_smoothing,
                                    needs=needs, adversarial=adversarial),
                  in_shardings=(replicated, sharded, replicated, replicated),
                  out_shardings=(replicated, replicated), donate_argnums=(0,))
  start_fn = jax.jit(functools.partial(step.start_update, needs=needs),
                     out_shardings=replicated)
  # `add` also returns its microbatch count, a scalar the host can wait on
  # (the sums themselves are donated to the next call).
  add_fn = jax.jit(lambda state, sums, microbatch: (lambda s: (s, s.microbatches))(
      add(state, sums, microbatch)), in_shardings=(replicated, replicated, sharded),
                   out_shardings=replicated, donate_argnums=(1,))
  def finish_update(state, sums, params_init, lr_position, num_microbatches):
    return step.finish_update(state, sums, params_init, lr_position, tx=tx,
                              schedule=schedule, num_microbatches=num_microbatches)

  finish_fn = jax.jit(finish_update, in_shardings=(replicated,) * 4,
                      out_shardings=(replicated, replicated), static_argnums=(4,),
                      donate_argnums=(0,))
  counts_matter = "microbatch_grad_sq" in needs
  ahead = dispatch_ahead(mesh)
  default_count = num_microbatches

  def update(state, microbatches, params_init, lr_position=None,
             num_microbatches=default_count):
    if num_microbatches == 1:
      return fused(state, next(iter(microbatches)), params_init, lr_position)
    sums, dispatched = start_fn(state), collections.deque()
    for microbatch in microbatches:
      sums, done = add_fn(state, sums, microbatch)
      dispatched.append(done)
      if len(dispatched) > ahead:  # Memory stays that of a few microbatches.
        jax.block_until_ready(dispatched.popleft())
    # Static, so passed only where read: other optimizers compile one finish.
    return finish_fn(state, sums, params_init, lr_position,
                     num_microbatches if counts_matter else 1)

  update.programs = {"start": start_fn, "add": add_fn, "finish": finish_fn, "fused": fused}
  return update


def adversarial_section(config) -> Optional[Dict[str, Any]]:
  """The `loss.adversarial` section as plain values when ConAdv is on, else None."""
  section = config.loss.get("adversarial")
  if section is None or not section.get("enabled", False):
    return None
  return section.to_dict()


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: Sequence[str] = ()) -> Dict[str, Any]:
  """Trains one config to its last update, resuming from the workdir if it can.

  Returns:
    The final eval metrics, update count and wall time.

  Raises:
    ConfigError: bad config or workdir (before any compute).
    Diverged: a non-finite value appeared (the last good checkpoint is kept).
    Preempted: SIGTERM arrived (a checkpoint was written first).
  """
  start_time = time.time()
  config_lib.validate(config, num_devices=jax.device_count(),
                      num_processes=jax.process_count())
  check_workdir_location(workdir)
  check_workdir_config(config, workdir, allow_config_change)  # reads only
  with hold_workdir(workdir) as lease:
    return _train(config, workdir, lease, start_time)


def _train(config, workdir: str, lease, start_time: float) -> Dict[str, Any]:
  """The run itself, with the workdir held (see train_and_evaluate)."""
  is_main = jax.process_index() == 0
  mesh = parallel.create_mesh()
  replicated, batch_sharding = parallel.replicated(mesh), parallel.batch_sharding(mesh)

  # Data: process 0 builds offline datasets before the others look.
  if jax.process_count() > 1:
    if is_main:
      data.prepare(config)
    parallel.barrier("lbt: data prepared")
  pipeline = data.create_pipeline(config, jax.process_index(), jax.process_count(),
                                  jax.device_count())
  steps_per_epoch = pipeline.steps_per_epoch
  num_steps = config_lib.num_train_steps(config, steps_per_epoch)
  # The batch of each update and where its examples start (lbt/batch_schedule.py).
  plan = batch_schedule.create_plan(
      config, pool_size=len(pipeline.train_batches.pool),
      microbatch=config_lib.microbatch_size(config), constant_updates=num_steps)
  changing = plan.name != "constant"

  # Model and optimizer.
  spec = pipeline.spec
  model = build_model(config, spec.num_classes)
  peak_lr = optim.effective_learning_rate(config.optimizer, config.batch_size)
  schedule = optim.create_schedule(config.schedule, peak_lr, steps_per_epoch, num_steps)
  # A changing batch takes its LR from the schedule at the epochs trained.
  tx = (optim.create_with_learning_rate_input(config.optimizer) if changing
        else optim.create(config.optimizer, schedule))

  def lr_position(slot) -> Optional[float]:
    return slot.epochs_done * steps_per_epoch if changing else None

  # State, created already replicated over the mesh.
  adversarial = adversarial_section(config)
  init_fn = jax.jit(functools.partial(
      step.create_train_state, model=model, tx=tx,
      input_shape=(pipeline.image_size, pipeline.image_size, spec.image_shape[2]),
      keep_previous_params=bool(adversarial) and adversarial["parameters"] == "stale"),
                    out_shardings=replicated)
  rng = jax.random.PRNGKey(config.seed)
  state = init_fn(rng)
  params_init = jax.tree.map(jnp.copy, state.params)  # `state` is donated.

  # Resume.
  write_config(config, workdir)
  manager = checkpoint.create_manager(workdir, config.checkpoint_keep)
  stream = pipeline.train_stream(plan)
  try:
    restored = checkpoint.restore(manager, checkpoint.abstract(state), stream)
  except checkpoint.CheckpointRestoreError as e:
    raise ConfigError("--workdir", workdir, f"a workdir of this config: {e}") from None
  start_step = 0
  if restored is not None:
    state, start_step = restored
    if plan.update != start_step:
      raise ConfigError("--workdir", workdir, f"a workdir whose checkpoint of update "
                        f"{start_step} holds that update's data position (it holds "
                        f"{plan.update})")
    if is_main:
      print(f"lbt: resumed from the checkpoint of update {start_step}", flush=True)
  note = optim.warmup_note(config.schedule, steps_per_epoch, num_steps)
  if note and is_main:
    print(note, flush=True)

  ahead = dispatch_ahead(mesh)
  # One set of programs for every batch: each compiles once per microbatch shape.
  update_fn = compile_update(model, tx, schedule, mesh, 1, config.loss.label_smoothing,
                             needs=optim.needs(config.optimizer), adversarial=adversarial)
  eval_fn = jax.jit(functools.partial(step.eval_step, apply_fn=model.apply),
                    in_shardings=(replicated, batch_sharding), out_shardings=replicated)

  writer = metrics_lib.MetricsWriter(workdir, enabled=is_main, resume_step=start_step)
  layout = {"num_devices": jax.device_count(), "num_processes": jax.process_count()}
  earlier = metrics_lib.read_jsonl(workdir, "run") if is_main and start_step else []
  moved = {k: earlier[-1].get(k) for k in layout if earlier and earlier[-1].get(k) != layout[k]}
  if moved:
    # Results stay valid, but reduction order changes: not bit-identical to an
    # uninterrupted run on the old layout (README, "Guarantees").
    print("lbt: resuming on " + ", ".join(f"{layout[k]} {k[4:]} (was {v})"
                                          for k, v in moved.items()), flush=True)
  planned = start_step + batch_schedule.planned_updates(plan)  # noise_scale: a guess
  writer.write(start_step, "run", {
      "effective_learning_rate": peak_lr, "steps_per_epoch": steps_per_epoch,
      "num_train_steps": planned,
      "num_microbatches": pipeline.train_batches.layout(plan.peek().batch)[0],
      "batch_size": plan.peek().batch, **layout,
      **{f"previous_{k}": v for k, v in moved.items()}})
  progress = metrics_lib.Progress(planned, start_step, enabled=is_main)
  pending = []  # (metrics, batch, microbatches) of the updates not yet fetched.

  def flush_train_metrics(done: int) -> None:
    """Writes the buffered per-update metrics and stops on a non-finite one."""
    rows = metrics_lib.stack_steps([m for m, _, _ in pending])
    batches = np.array([b for _, b, _ in pending])
    counts = np.array([n for _, _, n in pending])
    first = done - len(pending)
    pending.clear()
    if not rows:
      return
    small_sq_norm = rows.pop("microbatch_grad_sq_norm")
    # The gradient noise scale comes free with accumulation (>= 2 microbatches);
    # its moving averages are the plan's, saved with each checkpoint.
    measured = np.flatnonzero(counts > 1)
    noise = {}
    if measured.size:
      grad_sq, trace = zip(*(diagnostics.gradient_noise_scale(
          small_sq_norm[i], rows["grad_norm"][i] ** 2, batches[i] / counts[i], batches[i])
                             for i in measured))
      b_simple = plan.add_noise_estimates(grad_sq, trace)
      noise = {i: {"noise_grad_sq": grad_sq[j], "noise_trace": trace[j],
                   "b_simple": b_simple[j]} for j, i in enumerate(measured)}
    for i in range(len(rows["loss"])):
      record = {k: v[i] for k, v in rows.items()}
      if changing:
        record["batch_size"] = batches[i]
      writer.write(first + i + 1, "train", {**record, **noise.get(i, {})})
    bad = np.flatnonzero(~rows["finite"])
    if bad.size:
      i = int(bad[0])
      error = Diverged(first + i + 1, float(rows["loss"][i]),
                       float(rows["grad_norm"][i]), float(rows["learning_rate"][i]),
                       manager.latest_step())
      writer.write(error.update, "diverged", {
          "loss": error.loss, "grad_norm": error.grad_norm,
          "learning_rate": error.learning_rate,
          "last_checkpoint": -1 if error.last_checkpoint is None else error.last_checkpoint})
      writer.flush()
      raise error
    progress.update(len(rows["loss"]), loss=float(rows["loss"][-1]),
                    lr=float(rows["learning_rate"][-1]))

  def evaluate_all(done: int) -> Dict[str, float]:
    """Test (and validation) metrics, written to metrics.jsonl; returns test's."""
    if len(pipeline.validation_indices):
      validation = evaluate(eval_fn, state, pipeline.validation_batches(), mesh)
      writer.write(done, "validation", validation)
      scores["validation_accuracy"] = validation["accuracy"]
      scores["validation_loss"] = validation["loss"]
    result = evaluate(eval_fn, state, pipeline.eval_batches(), mesh)
    writer.write(done, "eval", result)
    return result

  def every(n: int, done: int) -> bool:
    return n > 0 and done % n == 0

  final, scores, start_examples = None, {}, plan.examples()
  try:
    with PreemptionNotice() as preemption:
      while not plan.finished():
        slot = stream.next_update()
        done, count = slot.update + 1, stream.num_microbatches(slot)
        microbatches = parallel.prefetch_to_mesh(stream, mesh, count)
        state, step_metrics = update_fn(state, microbatches, params_init,
                                        lr_position(slot), num_microbatches=count)
        pending.append((step_metrics, slot.batch, count))
        if len(pending) > ahead:  # Host memory stays that of a few batches.
          jax.block_until_ready(pending[-1 - ahead][0])
        if plan.is_decision_point():
          # The next batch, and so whether the run ends here, follows every
          # estimate so far.
          flush_train_metrics(done)
          progress.set_total(done + batch_schedule.planned_updates(plan))
        is_last = plan.finished()
        evaluate_now = every(config.eval_every_steps, done) or is_last
        save_now = every(config.checkpoint_every_steps, done) or is_last
        host_sync = every(config.log_every_steps, done) or evaluate_now or save_now
        if host_sync:
          flush_train_metrics(done)
        if evaluate_now:
          final = evaluate_all(done)
        if save_now:
          check_lease(lease)
          writer.flush()  # A resume rewrites no line up to its checkpoint.
          checkpoint.save(manager, done, state, stream)
        if preemption.reached(done) and not is_last:
          flush_train_metrics(done)
          writer.flush()
          checkpoint.save(manager, done, state, stream)
          raise Preempted(f"SIGTERM: saved the checkpoint of update {done}")
    num_steps = plan.update
    progress.set_total(num_steps)
    if final is None:  # Resumed from the checkpoint of the last update.
      final = evaluate_all(num_steps)
    wall_time = time.time() - start_time
    summary = {"eval_accuracy": final["accuracy"], "eval_loss": final["loss"],
               "eval_count": final["count"], **scores, "num_train_steps": num_steps,
               "effective_learning_rate": peak_lr, "wall_time_s": wall_time,
               "examples_per_second": (plan.examples() - start_examples) / wall_time,
               "examples": plan.examples()}
    writer.write(num_steps, "summary", summary)
  except BaseException:
    # The error in flight is the one to report, not one of closing the files.
    with contextlib.suppress(Exception):
      progress.close()
      writer.close()
    with contextlib.suppress(Exception):
      manager.close()
    raise
  progress.close()
  writer.close()
  manager.close()
  if is_main:
    print(f"lbt: test accuracy {final['accuracy']:.4f} on {final['count']} examples "
          f"after {num_steps} updates ({summary['wall_time_s']:.0f} s)", flush=True)
  return summary
