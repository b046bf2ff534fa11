"""The training loop of one run: set-up, the loop, and the summary, in that order.

`train_and_evaluate` validates the config (lbt.engine.config: the `RunFacts` every
stage reads), holds the workdir (lbt.engine.workdir), then `set_up` builds the data
pipeline, the model, the optimizer, the jitted programs (lbt.engine.programs) and
the state, resuming from the last checkpoint; `train_loop` runs the updates,
each doing what lbt.engine.update_plan decides for it: writes metrics
(lbt.engine.train_metrics), evaluates and checkpoints; `finish`
evaluates on the test set and writes the summary. The step itself is pure
(lbt.engine.step); the I/O is here.

Data that fits on the devices stays there (lbt.data.device_input, else the
host pipeline feeds each batch); there the updates between two that do more
than train (log, evaluate, checkpoint, end) run as one dispatch
(`programs.compile_updates`). The results are the same either way, to the bit.

A run may stop before its last update at a target on held-out data
(`stop_at_target`: the first evaluated update whose validation accuracy or
loss reaches the value; the test set never stops a run), or at a cap in
updates the caller passes (`max_updates`: a tuning trial that can no longer
beat the best one).
"""

import contextlib
import dataclasses
import time
from typing import Any, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lbt.stats import steps_to_target
from lbt.engine import batch_schedule, checkpoint
from lbt import data
from lbt.data import device_input
from lbt.engine import config as config_lib
from lbt.io import faults
from lbt.io import metrics as metrics_lib
from lbt import optim
from lbt.engine import parallel, programs, train_metrics, update_plan
from lbt.engine import workdir as workdir_lib
from lbt.errors import ConfigError, Preempted
from lbt.io.preemption import PreemptionNotice


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where a run trains when it is one of several side by side in one process
  (`lbt.study --devices_per_point`): its own devices, and the study's
  preemption notice (signals reach only the main thread, which holds it).
  Such a run shows no progress bar; its console lines stay."""
  devices: Sequence[Any]
  preemption: PreemptionNotice


@dataclasses.dataclass
class Run:
  """What the loop needs of a run once it is set up (see `set_up`): `config`
  for the settings as given, `facts` for every value derived from them."""
  config: Any
  facts: config_lib.RunFacts
  workdir: str
  lease: Any
  mesh: Any
  pipeline: data.Pipeline
  input: Any  # where batches come from: parallel.MeshInput or device_input.DeviceData
  plan: batch_schedule.BatchPlan
  stream: Any
  update_fn: Any
  updates_fn: Any  # several updates a dispatch (programs.compile_updates), or None
  eval_fn: Any
  params_init: Any
  manager: Any
  writer: metrics_lib.MetricsWriter
  progress: metrics_lib.Progress
  start_step: int
  start_examples: int
  cadence: update_plan.Cadence  # its intervals and cap: what each update does
  stopped: Optional[str]  # why the resumed run had stopped at its checkpoint, if it had
  placement: Optional[Placement]  # None: the whole mesh, this run alone

  @property
  def is_main(self) -> bool:
    return jax.process_index() == 0

  def close(self, quietly: bool = False) -> None:
    """Closes the progress bar, the metrics files and the checkpoint manager;
    `quietly` when another error is in flight (that one is the one to report)."""
    for close in (self.progress.close, self.writer.close, self.manager.close):
      try:
        close()
      except Exception:  # pylint: disable=broad-except
        if not quietly:
          raise


def train_and_evaluate(config, workdir: str, allow_config_change: Sequence[str] = (),
                       facts: Optional[config_lib.RunFacts] = None,
                       max_updates: int = 0,
                       placement: Optional[Placement] = None) -> Dict[str, Any]:
  """Trains one config to its end, resuming from the workdir if it can.

  Args:
    config: the run's config.
    workdir: where everything of the run is written.
    allow_config_change: fields that may differ from the workdir's config.json.
    facts: `config.validate`'s result, when the caller validated already.
    max_updates: > 0: stop after this many updates even if the config runs
      longer (the summary says so); not part of the config.
    placement: the devices and preemption notice of a run beside others in
      this process; None: every device.

  Returns:
    The summary: final test metrics, updates, examples, wall time, target.

  Raises:
    ConfigError: bad config or workdir (before any compute).
    Diverged: a non-finite value appeared (the last good checkpoint is kept).
    Preempted: SIGTERM arrived (a checkpoint was written first).
  """
  start_time = time.time()
  if facts is None:
    facts = config_lib.validate(config, num_devices=len(placement.devices) if placement
                                else jax.device_count())
  workdir_lib.check_location(workdir)
  changed = workdir_lib.check_config(config, workdir, allow_config_change)  # reads only
  workdir_lib.check_facts(facts, workdir, changed)
  with workdir_lib.hold(workdir) as lease:
    run, state = set_up(config, facts, workdir, lease, max_updates, placement)
    faults.moment("setup")
    try:
      state, final, stop = train_loop(run, state)
      summary = finish(run, state, final, stop, start_time)
    except BaseException:
      run.close(quietly=True)
      raise
    run.close()
  if run.is_main:
    print(f"lbt: test accuracy {summary['eval_accuracy']:.4f} on {summary['eval_count']} "
          f"examples after {summary['num_train_steps']} updates "
          f"({summary['wall_time_s']:.0f} s)", flush=True)
  return summary


# ---- set-up ----

def set_up(config, facts, workdir: str, lease, max_updates: int,
           placement: Optional[Placement] = None):
  """Data, model, optimizer, programs and state, resumed when the workdir has
  a checkpoint; returns (Run, state)."""
  mesh = parallel.create_mesh(placement.devices if placement else None)
  pipeline = create_pipeline(config, facts, mesh)
  source = create_input(pipeline, mesh, constant_batch=(
      facts.batch_schedule.get("name", "constant") == "constant"))
  plan = batch_schedule.create_plan(facts)
  model = programs.build_model(config, facts.num_classes)
  schedule = optim.create_schedule(config.schedule, facts.peak_learning_rate,
                                   facts.steps_per_epoch, facts.num_train_steps)
  # One route for the learning rate: the step sets it from the schedule.
  tx = optim.create_with_learning_rate_input(config.optimizer)
  key = programs.program_key(config, facts)
  state = programs.initial_state(config, facts, pipeline, mesh, model, tx, key)
  params_init = jax.tree.map(jnp.copy, state.params)  # `state` is donated.
  workdir_lib.write_config(config, workdir)
  workdir_lib.write_facts(facts, workdir)
  manager = checkpoint.create_manager(workdir, config.checkpoint_keep)
  stream = source.train_stream(plan)
  state, start_step = _resume(workdir, manager, state, stream, plan)
  update_fn = programs.compile_update(
      model, tx, schedule, mesh, 1, config.loss.label_smoothing,
      needs=optim.needs(config.optimizer), adversarial=facts.adversarial,
      gradient_penalty=facts.gradient_penalty, key=key)
  updates_fn = programs.updates_where_they_apply(config, facts, source, plan, model, tx,
                                                 schedule, mesh, key)
  stopped = _stopped_at(workdir, start_step, max_updates, plan.finished())
  writer = metrics_lib.MetricsWriter(workdir, enabled=jax.process_index() == 0,
                                     resume_step=start_step)
  planned = start_step + batch_schedule.planned_updates(plan)  # noise_scale: a guess
  progress = metrics_lib.Progress(planned, start_step,
                                  enabled=jax.process_index() == 0 and placement is None)
  run = Run(config, facts, workdir, lease, mesh, pipeline, source, plan, stream, update_fn,
            updates_fn, programs.compile_eval(model, mesh, key), params_init, manager, writer,
            progress, start_step, plan.examples(),
            update_plan.cadence_of(config, facts, max_updates), stopped, placement)
  _announce(run, planned)
  return run, state


def create_pipeline(config, facts, mesh) -> data.Pipeline:
  """The data pipeline of this process for `mesh`; process 0 builds offline
  datasets before the others look."""
  spec = data.DATASETS.get(config.dataset.name)
  if jax.process_count() > 1:
    if jax.process_index() == 0:
      data.prepare(spec, config.dataset.data_dir)
    parallel.barrier("lbt: data prepared")
  pipeline = data.Pipeline(
      spec, data_dir=config.dataset.data_dir, cache=config.dataset.cache, seed=config.seed,
      batch_size=facts.batch_size, microbatch_size=facts.microbatch_size,
      steps_per_epoch=facts.steps_per_epoch, validation_examples=facts.validation_examples,
      image_size=config_lib.dataset_field(config, "image_size"),
      eval_batch_size=config.eval_batch_size, num_devices=mesh.size,
      process_index=jax.process_index(), process_count=jax.process_count(),
      noise_scale_split=facts.noise_scale_split,
      shuffle=config_lib.dataset_field(config, "shuffle"))
  if len(pipeline.train_batches.pool) != facts.train_examples:  # the facts' one source
    raise ConfigError("dataset.data_dir", config.dataset.data_dir,
                      f"a copy of {config.dataset.name} with {facts.train_examples} training "
                      f"examples after the hold-out (this one has "
                      f"{len(pipeline.train_batches.pool)})")
  return pipeline


def create_input(pipeline: data.Pipeline, mesh, constant_batch: bool = True):
  """Where the run's batches come from: its splits held on the devices when
  they can be (lbt.data.device_input; LBT_INPUT chooses), else the host
  pipeline. Either gives the same batches. `auto` keeps a run whose batch
  changes on the host pipeline: a resumed steps-schedule run on the device
  path aborted inside XLA once in three loaded full-suite runs (not yet
  understood), while every constant-batch study trial ran on it."""
  wanted = device_input.choice()
  reason = "LBT_INPUT=pipeline" if wanted == "pipeline" else device_input.unavailable(pipeline)
  if wanted == "auto" and not constant_batch:
    reason = reason or "the batch changes while it trains"
  if wanted == "device" and reason:
    raise ConfigError("LBT_INPUT", wanted, f"a run whose data can stay on the devices "
                      f"(this one cannot: {reason})")
  if reason:
    return parallel.MeshInput(pipeline, mesh)
  return device_input.DeviceData(pipeline, parallel.replicated(mesh),
                                 parallel.batch_sharding(mesh))


def _resume(workdir: str, manager, state, stream, plan):
  """(state, first update) from the newest checkpoint that restores, else as given."""
  try:
    restored = checkpoint.restore(manager, checkpoint.abstract(state), stream)
  except checkpoint.CheckpointRestoreError as e:
    raise ConfigError("--workdir", workdir, f"a workdir of this config: {e} (checkpoints "
                      "written before the optimizer state held the learning rate, "
                      "lbt of 2026-12, cannot be restored: resume them with the lbt "
                      "that wrote them)") from None
  if restored is None:
    return state, 0
  state, start_step = restored
  if plan.update != start_step:
    raise ConfigError("--workdir", workdir, f"a workdir whose checkpoint of update "
                      f"{start_step} holds that update's data position (it holds "
                      f"{plan.update})")
  if jax.process_index() == 0:
    print(f"lbt: resumed from the checkpoint of update {start_step}", flush=True)
  return state, start_step


def _stopped_at(workdir: str, start_step: int, max_updates: int,
                finished: bool) -> Optional[str]:
  """Whether the run had stopped at its checkpoint before its plan's end
  (`finished`: the plan ends there): at its target (the checkpoint's update
  has its `target` record, written before the checkpoint), or at a cap this
  call keeps (`max_updates` at or below it). Read from what the checkpoint
  covers, not from the summary: a run killed between its last checkpoint and
  its summary would otherwise train past its stop (every process agrees)."""
  stopped = None
  if jax.process_index() == 0 and start_step:
    if any(r["step"] == start_step for r in metrics_lib.read_jsonl(workdir, "target")):
      stopped = "target"
    elif 0 < max_updates <= start_step and not finished:
      stopped = "max_updates"
  code = parallel.any_process(stopped == "target") * 2 + parallel.any_process(
      stopped == "max_updates")
  return {2: "target", 1: "max_updates"}.get(code)


def _announce(run: Run, planned: int) -> None:
  """The console lines of a starting run and its `run` record."""
  config, facts = run.config, run.facts
  notes = [facts.length_note(),
           optim.warmup_note(config.schedule, facts.steps_per_epoch, facts.num_train_steps)]
  for note in filter(None, notes):
    if run.is_main:
      print(note, flush=True)
  layout = {"num_devices": run.mesh.size, "num_processes": jax.process_count()}
  earlier = (metrics_lib.read_jsonl(run.workdir, "run") if run.is_main and run.start_step
             else [])
  moved = {k: earlier[-1].get(k) for k in layout
           if earlier and earlier[-1].get(k) != layout[k]}
  if moved and run.is_main:
    # Results stay valid, but reduction order changes: not bit-identical to an
    # uninterrupted run on the old layout (README, "Guarantees").
    print("lbt: resuming on " + ", ".join(f"{layout[k]} {k[4:]} (was {v})"
                                          for k, v in moved.items()), flush=True)
  batch = run.plan.peek().batch
  run.writer.write(run.start_step, "run", {
      "effective_learning_rate": facts.peak_learning_rate,
      "steps_per_epoch": facts.steps_per_epoch, "num_train_steps": planned,
      "num_microbatches": run.pipeline.train_batches.layout(batch)[0],
      "batch_size": batch, "target_eval_every": run.cadence.target_every,
      "max_updates": run.cadence.max_updates, **layout,
      **{f"previous_{k}": v for k, v in moved.items()}})


# ---- the loop ----

def train_loop(run: Run, state):
  """Runs the updates from the resumed one to the end, a target or a cap.

  Returns:
    (state, the test metrics of the last evaluation or None, why it stopped:
    "end", "target" or "max_updates").
  """
  plan = run.plan
  ahead = programs.dispatch_ahead(run.mesh)
  buffer, final, stop = train_metrics.TrainMetrics(run), None, run.stopped
  shared = run.placement.preemption if run.placement else None
  with contextlib.nullcontext(shared) if shared else PreemptionNotice() as preemption:
    while stop is None and not plan.finished():
      slots = [run.stream.next_update() for _ in range(_updates_to_dispatch(run))]
      done = slots[-1].update + 1
      actions = update_plan.decide(run.cadence, done, last=plan.finished())
      state = _dispatch(run, state, slots, actions.full_diagnostics, buffer)
      buffer.wait_for(ahead)
      if plan.is_decision_point():
        # The next batch, and so whether the run ends here, follows every estimate.
        buffer.flush(done)
        run.progress.set_total(done + batch_schedule.planned_updates(plan))
        actions = actions.revised(run.cadence, last=plan.finished())
      if actions.flush:
        buffer.flush(done)
      validation = _validate(run, state, done) if actions.target_check else None
      stop = actions.stop(validation is not None and _reached_target(run, validation, done))
      if actions.evaluate or stop:
        final = evaluate_all(run, state, done, validation)
      if actions.checkpoint or stop:
        workdir_lib.check_lease(run.lease)
        # Every update up to the checkpoint is written (and checked finite, and
        # its noise estimate in the plan the checkpoint saves): a resume
        # rewrites no line up to it, so one left in the buffer would be lost.
        buffer.flush(done)
        run.writer.flush()
        checkpoint.save(run.manager, done, state, run.stream)
      for last in [False] * (len(slots) - 1) + [True]:  # one moment per update dispatched
        faults.moment("ended" if stop and last else "update")
      if preemption.reached(done) and not stop:
        buffer.flush(done)
        run.writer.flush()
        checkpoint.save(run.manager, done, state, run.stream)
        raise Preempted(f"SIGTERM: saved the checkpoint of update {done}")
  return state, final, stop or "end"


def _updates_to_dispatch(run: Run) -> int:
  """How many updates the next dispatch runs: one, or with `run.updates_fn`
  those up to the next one that does more than train (log, evaluate, check
  the target, checkpoint or end), at most its chunk. Those in between compute
  no full diagnostics, and the host has nothing to do there."""
  if run.updates_fn is None:
    return 1
  first = run.plan.update + 1
  stop = min(run.plan.num_updates, first + run.updates_fn.length - 1)
  acts = (done for done in range(first, stop) if update_plan.decide(
      run.cadence, done, last=False).full_diagnostics)
  return next(acts, stop) - first + 1


def _dispatch(run: Run, state, slots, full_last: bool, buffer) -> Any:
  """Runs the updates of `slots` (several only with `run.updates_fn`), the
  last with full diagnostics when `full_last`; their metrics go to `buffer`."""
  positions = [run.plan.schedule_position(s, run.facts.steps_per_epoch) for s in slots]
  if run.updates_fn is not None:
    indices = np.stack([run.stream.batches.examples(s, 0)[0] for s in slots])
    state, metrics = run.updates_fn(state, run.input, indices, positions, full_last,
                                    run.params_init)
    buffer.add_updates(metrics, len(slots), slots[0].batch, full_last)
    return state
  slot, = slots
  count = run.stream.num_microbatches(slot)
  state, metrics = run.update_fn(state, run.input.microbatches(run.stream, count),
                                 run.params_init, positions[0], num_microbatches=count,
                                 full_diagnostics=full_last)
  buffer.add(metrics, slot.batch, count, full_last)
  return state


def _validate(run: Run, state, done: int) -> Dict[str, float]:
  """The validation split's metrics at update `done`, written to metrics.jsonl."""
  result = programs.evaluate(run.eval_fn, state, run.input.validation_batches())
  run.writer.write(done, "validation", result)
  return result


def _reached_target(run: Run, validation: Dict[str, float], done: int) -> bool:
  """True (and a `target` record) when update `done`'s validation metric
  reaches stop_at_target's value: called at each evaluated update, in order."""
  target = run.facts.stop_at_target
  value = validation[target["metric"].split("_", 1)[1]]
  reached = steps_to_target.reaches(
      value, target["value"], "max" if target["metric"].endswith("accuracy") else "min")
  if reached:
    run.writer.write(done, "target", {"metric": target["metric"], "value": value,
                                      "target": target["value"],
                                      "examples": run.plan.examples(),
                                      "every": target["every"]})
  return bool(reached)


def evaluate_all(run: Run, state, done: int,
                 validation: Optional[Dict[str, float]] = None) -> Dict[str, float]:
  """Test (and validation) metrics, written to metrics.jsonl; returns test's
  with the validation split's as validation_accuracy / validation_loss.
  `validation`: already measured at this update (not evaluated again)."""
  extra = {}
  if len(run.pipeline.validation_indices):
    if validation is None:
      validation = _validate(run, state, done)
    extra = {"validation_accuracy": validation["accuracy"],
             "validation_loss": validation["loss"]}
  result = programs.evaluate(run.eval_fn, state, run.input.eval_batches())
  run.writer.write(done, "eval", result)
  return {**result, **extra}


# ---- the summary ----

def finish(run: Run, state, final: Optional[Dict[str, float]], stop: str,
           start_time: float) -> Dict[str, Any]:
  """The last evaluation (if the loop made none: resumed at its end) and the
  summary record, which marks the run finished."""
  num_steps = run.plan.update
  run.progress.set_total(num_steps)
  if final is None:
    final = evaluate_all(run, state, num_steps)
  wall_time = time.time() - start_time
  trained = run.plan.examples() - run.start_examples
  summary = {"eval_accuracy": final["accuracy"], "eval_loss": final["loss"],
             "eval_count": final["count"],
             **{k: v for k, v in final.items() if k.startswith("validation_")},
             "num_train_steps": num_steps, "stopped_by": stop,
             "effective_learning_rate": run.facts.peak_learning_rate,
             "wall_time_s": wall_time, "examples_per_second": trained / wall_time,
             "examples": run.plan.examples()}
  run.writer.write(num_steps, "summary", summary)
  return summary
