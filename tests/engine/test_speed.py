"""What makes a study fast must not change what it measures: the lean update
(full diagnostics only where written), programs shared between points through
the persistent compilation cache, and points side by side on sub-meshes."""

import contextlib
import functools
import os

import jax
import numpy as np
import pytest


from lbt.engine import checkpoint, parallel, programs, step, train
from lbt import errors, models, optim
from lbt.io import metrics
from lbt.studies import results
from lbt.errors import ConfigError
from lbt.io.preemption import PreemptionNotice
from tiny_study import TIMING, load, run_study


@contextlib.contextmanager
def compile_events():
  """Counts programs compiled and loaded from the persistent cache inside the
  block (JAX times a load as a compile too: only hits tell them apart)."""
  counts = {"compiled": 0, "cache hits": 0}

  def on_duration(event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      counts["compiled"] += 1

  def on_event(event, **kwargs):
    del kwargs
    if event == "/jax/compilation_cache/cache_hits":
      counts["cache hits"] += 1
      counts["compiled"] -= 1

  jax.monitoring.register_event_duration_secs_listener(on_duration)
  jax.monitoring.register_event_listener(on_event)
  try:
    yield counts
  finally:
    jax.monitoring.unregister_event_duration_listener(on_duration)
    jax.monitoring.unregister_event_listener(on_event)


def norm64(tree) -> float:
  return float(np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2)
                           for x in jax.tree.leaves(tree))))


def test_a_lean_update_moves_the_state_exactly_as_a_full_one_in_one_program():
  mesh = parallel.create_mesh(jax.local_devices()[:1])
  model = models.create("mlp", num_classes=10, hidden_sizes=(32,))
  tx = optim.create_with_learning_rate_input(dict(name="lars", weight_decay=1e-4))
  init = jax.jit(functools.partial(step.create_train_state, model=model, tx=tx,
                                   input_shape=(28, 28, 1)))
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(64, 28, 28, 1)).astype(np.float32),
           "label": rng.integers(0, 10, 64).astype(np.int32)}
  update = programs.compile_update(model, tx, lambda c: 0.5, mesh, 1, 0.0)
  params_init = init(jax.random.PRNGKey(0)).params
  before = jax.device_get(init(jax.random.PRNGKey(0)))
  lean_state, lean = update(init(jax.random.PRNGKey(0)), [batch], params_init, 0.0,
                            full_diagnostics=False)
  full_state, full = update(init(jax.random.PRNGKey(0)), [batch], params_init, 0.0,
                            full_diagnostics=True)
  assert update.programs["fused"]._cache_size() == 1  # One compile serves both.
  for a, b in zip(jax.tree.leaves(lean_state), jax.tree.leaves(full_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for key in ("loss", "grad_norm", "learning_rate", "finite"):
    assert float(lean[key]) == float(full[key])
  assert all(float(lean[k]) == 0.0 for k in step.FULL_DIAGNOSTICS)
  after = jax.device_get(full_state.params)
  moved = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
                       after, before.params)
  assert float(full["param_norm"]) == pytest.approx(norm64(after), rel=1e-5)
  assert float(full["update_norm"]) == pytest.approx(norm64(moved), rel=1e-4)
  assert float(full["distance_from_init"]) == pytest.approx(norm64(moved), rel=1e-4)
  assert 0 < float(full["trust_ratio_min"]) <= float(full["trust_ratio_max"])


def test_full_diagnostics_are_written_on_log_evaluation_and_last_updates(make_config,
                                                                          tmp_path):
  config = make_config("momentum,batch=3000,model=mlp", num_train_steps=20,
                       log_every_steps=5, eval_every_steps=7, checkpoint_every_steps=100,
                       eval_batch_size=5000, model__hidden_sizes=(16,))
  train.train_and_evaluate(config, str(tmp_path))
  records = metrics.read_jsonl(str(tmp_path), "train")
  assert [r["step"] for r in records] == list(range(1, 21))
  full = [r["step"] for r in records if "param_norm" in r]
  assert full == [5, 7, 10, 14, 15, 20]
  assert all("distance_from_init" in r and "update_norm" in r for r in records
             if r["step"] in full)
  assert all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) for r in records)
  saved = checkpoint.load_state(str(tmp_path))  # The checkpoint of update 20.
  params = saved["params"] if isinstance(saved, dict) else saved.params
  assert records[-1]["param_norm"] == pytest.approx(norm64(params), rel=1e-5)


@pytest.fixture(scope="module")
def shared_study(data_dir, tmp_path_factory):
  """Three points of one shape that differ in learning rate, warmup and length."""
  from configs import fashion_mnist

  def point(lr, warmup, steps):
    config = fashion_mnist.get_config("momentum,batch=6000,model=mlp")
    config.model.hidden_sizes = (19,)  # No other test's programs: none compiled before.
    config.optimizer.learning_rate = lr
    config.schedule.warmup_epochs = warmup
    config.num_train_steps = steps
    config.eval_batch_size = 5000
    config.dataset.data_dir = data_dir
    return config

  return {"momentum-b6000-lr0.1": point(0.1, 0.2, 6),
          "momentum-b6000-lr0.2": point(0.2, 0.5, 8),
          "momentum-b6000-lr0.4": point(0.4, 0.0, 5)}


def test_points_that_differ_in_learning_rate_and_schedule_compile_once(shared_study,
                                                                       tmp_path, monkeypatch):
  # Each run builds its programs (none kept in the process): the persistent
  # compilation cache serves them.
  monkeypatch.setattr(programs, "KEPT_PROGRAMS", 0)
  first, again = str(tmp_path / "first"), str(tmp_path / "again")
  with compile_events() as cold:
    run_study(shared_study, first, only=["*lr0.1"])
  with compile_events() as warm:
    run_study(shared_study, first)  # Two new points of the same shape.
  # Variables, optimizer state, schedule, update and evaluation.
  assert cold["compiled"] >= 5 and cold["cache hits"] == 0, cold
  # Only the schedules are new programs; the other four come from the cache.
  assert warm["compiled"] == 2 and warm["cache hits"] == 2 * 4, (cold, warm)
  assert os.listdir(os.path.join(first, "compilation_cache"))
  with compile_events() as elsewhere:
    run_study(shared_study, again, compilation_cache="none")
  assert elsewhere["cache hits"] == 0 and not os.path.exists(
      os.path.join(again, "compilation_cache"))
  same = [{k: v for k, v in r.items() if k not in TIMING} for r in
          results.read_database(first)]
  other = [{k: v for k, v in r.items() if k not in TIMING} for r in
           results.read_database(again)]
  assert same == other  # A cached program computes what a compiled one does.


def test_a_process_keeps_the_programs_of_points_that_differ_in_learning_rate(
    shared_study, tmp_path):
  workdir = str(tmp_path / "kept")
  run_study(shared_study, workdir, only=["*lr0.1"])
  with compile_events() as rest:
    run_study(shared_study, workdir)  # Two new points of the same shape.
  # Only the two new schedules are built; nothing is traced or loaded again.
  assert rest == {"compiled": 2, "cache hits": 0}, rest


def test_devices_per_point_is_checked_before_anything_trains(study_file, tmp_path):
  for bad in (3, -1):
    with pytest.raises(ConfigError, match="devices_per_point"):
      run_study(load(study_file), str(tmp_path), devices_per_point=bad)
  assert not os.path.exists(tmp_path / "momentum-b12000")


def train_lines(workdir):
  return [{k: v for k, v in r.items() if k != "time"}
          for r in metrics.read_jsonl(workdir, "train")]


def test_points_side_by_side_equal_each_point_alone_on_as_many_devices(
    study_file, tmp_path, capsys):
  points = load(study_file)
  side = str(tmp_path / "side")
  statuses = run_study(points, side, devices_per_point=2)
  assert statuses == {"momentum-b12000": "finished", "sgd-b6000": "diverged",
                      "lars-b6000": "finished"}
  printed = capsys.readouterr().out
  assert "on devices 0-1" in printed and "on devices 2-3" in printed
  alone = str(tmp_path / "alone")
  with PreemptionNotice() as notice:
    placement = train.Placement(jax.local_devices()[:2], notice)
    for name, (config, _, _) in points.items():
      with contextlib.suppress(errors.Diverged):
        train.train_and_evaluate(config, os.path.join(alone, name), placement=placement)
  for name in points:
    assert train_lines(os.path.join(side, name)) == train_lines(os.path.join(alone, name))
    side_eval = metrics.read_jsonl(os.path.join(side, name), "eval")
    alone_eval = metrics.read_jsonl(os.path.join(alone, name), "eval")
    assert [(r["step"], r["accuracy"], r["loss"]) for r in side_eval] == [
        (r["step"], r["accuracy"], r["loss"]) for r in alone_eval]
  run = metrics.read_jsonl(os.path.join(side, "lars-b6000"), "run")[-1]
  assert run["num_devices"] == 2
