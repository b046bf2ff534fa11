"""The train step: accumulation equals one pass, and device count does not matter."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

from lbt.data import slots
from lbt.engine import parallel, programs, step
from lbt import models, optim


def lr_input(tx):
  """`tx` as the step takes every optimizer: its learning rate in its state
  (optax.inject_hyperparams), which the step sets from the schedule. The
  transformations here keep their own fixed rate and ignore it."""
  return optax.inject_hyperparams(lambda learning_rate: tx)(learning_rate=0.0)


class Linear(nn.Module):
  """A BN-free model: without BN, microbatches are exactly independent."""

  @nn.compact
  def __call__(self, x, train, mask=None):
    del train, mask  # No BatchNorm: nothing depends on the other examples.
    x = nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(x)


def random_batch(n, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.normal(size=(n, 28, 28, 1)).astype(np.float32),
          "label": rng.integers(0, 10, n).astype(np.int32)}


def strided(batch, num_microbatches):
  """Microbatch k = examples k, k + n, k + 2n, ... (what lbt.data streams)."""
  return [jax.tree.map(lambda x: x[k::num_microbatches], batch)
          for k in range(num_microbatches)]


def run_steps(model, tx, batches, *, num_microbatches=1, devices=None, schedule=None,
              adversarial=None):
  """Runs the real jitted update over a mesh of `devices`; returns state and metrics."""
  mesh = Mesh(np.asarray(devices or jax.devices()), (parallel.DATA_AXIS,))
  replicated, sharded = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  tx = lr_input(tx)
  init = jax.jit(functools.partial(
      step.create_train_state, model=model, tx=tx, input_shape=(28, 28, 1),
      keep_previous_params=bool(adversarial) and adversarial["parameters"] == "stale"),
                 out_shardings=replicated)
  state = init(jax.random.PRNGKey(0))
  params_init = init(jax.random.PRNGKey(0)).params
  update = programs.compile_update(model, tx, schedule or (lambda c: 1.0), mesh,
                                   num_microbatches, label_smoothing=0.0,
                                   adversarial=adversarial)
  history = []
  for position, batch in enumerate(batches):
    microbatches = (jax.device_put(m, sharded) for m in strided(batch, num_microbatches))
    state, metrics = update(state, microbatches, params_init, float(position))
    history.append(jax.device_get(metrics))
  return jax.device_get(state), history


def assert_trees_close(a, b, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


@pytest.mark.parametrize("model_name,ghost_size", [("linear", 0), ("lenet5", 8),
                                                   ("mlp", 16)])
def test_accumulated_gradient_equals_one_shot(model_name, ghost_size):
  """SGD at lr 1 moves the params by exactly minus the gradient."""
  model = (Linear() if model_name == "linear" else
           models.create(model_name, num_classes=10, ghost_size=ghost_size))
  tx = optax.sgd(1.0)
  batch = random_batch(128)
  one_shot, m1 = run_steps(model, tx, [batch])
  accumulated, m4 = run_steps(model, tx, [batch], num_microbatches=4)
  assert_trees_close(one_shot.params, accumulated.params, atol=1e-5)
  np.testing.assert_allclose(m1[0]["loss"], m4[0]["loss"], atol=1e-5)
  np.testing.assert_allclose(m1[0]["accuracy"], m4[0]["accuracy"], atol=1e-7)
  np.testing.assert_allclose(m1[0]["grad_norm"], m4[0]["grad_norm"], rtol=1e-5)


@pytest.mark.parametrize("num_microbatches", [1, 2])
def test_same_losses_on_one_and_eight_devices(num_microbatches):
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
  model = models.create("lenet5", num_classes=10)
  tx = optim.create_by_name("momentum", 0.05, weight_decay=5e-4)
  batches = [random_batch(64, seed=s) for s in range(4)]
  state1, hist1 = run_steps(model, tx, batches, num_microbatches=num_microbatches,
                            devices=jax.devices()[:1])
  state8, hist8 = run_steps(model, tx, batches, num_microbatches=num_microbatches,
                            devices=jax.devices()[:8])
  for a, b in zip(hist1, hist8):
    np.testing.assert_allclose(a["loss"], b["loss"], atol=1e-5)
  assert_trees_close(state1.params, state8.params, atol=1e-5)
  assert_trees_close(state1.batch_stats, state8.batch_stats, atol=1e-5)


def test_a_non_finite_update_is_flagged():
  """The step reports it; the loop stops before any save (test_reliability)."""
  model = Linear()
  tx = optax.sgd(1.0)
  good, bad = random_batch(16, 1), random_batch(16, 2)
  bad["image"][3, 0, 0, 0] = np.nan
  _, hist = run_steps(model, tx, [good, bad])
  assert [bool(h["finite"]) for h in hist] == [True, False]
  _, hist = run_steps(model, tx, [good, bad], num_microbatches=2)
  assert [bool(h["finite"]) for h in hist] == [True, False]


def test_label_smoothing_matches_hand_computed_cross_entropy():
  logits = jnp.array([[2.0, 0.0, -1.0]])
  p = np.exp([2.0, 0.0, -1.0]) / np.exp([2.0, 0.0, -1.0]).sum()
  targets = np.array([0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3])
  expected = -(targets * np.log(p)).sum()
  got = step.cross_entropy(logits, jnp.array([0]), 0.1)
  np.testing.assert_allclose(got, [expected], rtol=1e-6)


def test_mean_squared_microbatch_gradient_norm_is_reported():
  """mean_k |g_k|^2 over microbatch gradients, against jax.grad per microbatch."""
  model, tx = Linear(), optax.sgd(0.1)
  batch = random_batch(128, seed=5)
  state, hist = run_steps(model, tx, [batch], num_microbatches=4)
  variables = model.init(jax.random.split(jax.random.PRNGKey(0))[0],
                         jnp.zeros((1, 28, 28, 1)), train=False)

  def mean_loss(params, part):
    logits = model.apply({"params": params}, part["image"], train=True)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, part["label"]))

  squares = []
  for part in strided(batch, 4):
    grads = jax.grad(mean_loss)(variables["params"], part)
    squares.append(sum(float(np.sum(np.square(g))) for g in jax.tree.leaves(grads)))
  np.testing.assert_allclose(hist[0]["microbatch_grad_sq_norm"], np.mean(squares),
                             rtol=1e-5)


def test_gradient_program_memory_does_not_depend_on_the_batch():
  """Only a microbatch ever reaches the compiled gradient function."""
  model = models.create("lenet5", num_classes=10)
  tx = lr_input(optim.create_by_name("momentum", 0.1))
  mesh = Mesh(np.asarray(jax.devices()), (parallel.DATA_AXIS,))
  init = jax.jit(functools.partial(step.create_train_state, model=model, tx=tx,
                                   input_shape=(28, 28, 1)))
  state = init(jax.random.PRNGKey(0))
  sizes = {}
  for batch_size in (256, 4096, 60000 // 64 * 64):
    update = programs.compile_update(model, tx, lambda c: 0.1, mesh,
                                     batch_size // 64, label_smoothing=0.0)
    microbatch = jax.device_put(random_batch(64), parallel.batch_sharding(mesh))
    add = update.programs["add"].lower(state, step.start_update(state), microbatch)
    memory = add.compile().memory_analysis()
    sizes[batch_size] = (memory.argument_size_in_bytes, memory.temp_size_in_bytes)
  assert len(set(sizes.values())) == 1, sizes


def spy(needs):
  """An optimizer that keeps, as its state, the extra arguments the step passes."""
  def init(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return {"microbatch_grad_sq": zeros,
            "per_example_grad_norm": jax.tree.map(lambda p: jnp.zeros(()), params)}

  def update(updates, state, params=None, **extra):
    del params
    kept = {k: extra.get(k, v) for k, v in state.items()}
    return jax.tree.map(jnp.zeros_like, updates), kept

  tx = optax.GradientTransformationExtraArgs(init, update)
  return lr_input(tx), needs


@pytest.mark.parametrize("num_microbatches", [1, 4])
def test_the_step_passes_what_the_optimizer_needs(num_microbatches):
  """Per-example gradient norms (CLARS) and mean_k g_k^2 (GSNR), against
  jax.grad of each example and of each microbatch."""
  model = Linear()
  tx, needs = spy(("microbatch_grad_sq", "per_example_grad_norm"))
  batch = random_batch(64, seed=7)
  mesh = Mesh(np.asarray(jax.devices()), (parallel.DATA_AXIS,))
  init = jax.jit(functools.partial(step.create_train_state, model=model, tx=tx,
                                   input_shape=(28, 28, 1)))
  state = init(jax.random.PRNGKey(0))
  params = jax.tree.map(jnp.copy, state.params)  # `state` is donated.
  update = programs.compile_update(model, tx, lambda c: 0.0, mesh, num_microbatches,
                                   label_smoothing=0.0, needs=needs)
  sharded = parallel.batch_sharding(mesh)
  new_state, _ = update(
      state, (jax.device_put(m, sharded) for m in strided(batch, num_microbatches)),
      params, 0.0)
  got = jax.device_get(new_state.opt_state.inner_state)

  def mean_loss(p, images, labels):
    logits = model.apply({"params": p}, images, train=True)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

  per_example = [jax.grad(mean_loss)(params, batch["image"][i:i + 1],
                                     batch["label"][i:i + 1]) for i in range(64)]
  expected_norms = jax.tree.map(
      lambda *g: np.mean([np.linalg.norm(np.asarray(x)) for x in g]), *per_example)
  assert_trees_close(got["per_example_grad_norm"], expected_norms, atol=1e-5)
  parts = [jax.grad(mean_loss)(params, m["image"], m["label"])
           for m in strided(batch, num_microbatches)]
  expected_sq = jax.tree.map(lambda *g: np.mean([np.square(x) for x in g], axis=0), *parts)
  assert_trees_close(got["microbatch_grad_sq"], expected_sq, atol=1e-6)


@pytest.mark.parametrize("parameters", ["stale", "fresh"])
@pytest.mark.parametrize("num_microbatches", [1, 2])
def test_conadv_update_matches_hand_written_adversarial_training(parameters,
                                                                 num_microbatches):
  """Two SGD updates on (clean + FGSM) loss; stale examples use the parameters of
  the update before (Liu et al. 2022), fresh ones the current parameters."""
  model, lr, eps = Linear(), 0.5, 0.05
  adversarial = dict(enabled=True, step_size=eps, num_steps=1, epsilon=eps,
                     parameters=parameters, weight=0.5)
  batches = [random_batch(32, seed=s) for s in (11, 12)]
  state, _ = run_steps(model, optax.sgd(lr), batches, adversarial=adversarial,
                       num_microbatches=num_microbatches)

  def loss(p, x, y):
    logits = model.apply({"params": p}, x, train=True)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

  p = model.init(jax.random.split(jax.random.PRNGKey(0))[0],
                 jnp.zeros((1, 28, 28, 1)), train=False)["params"]
  previous = p
  for batch in batches:
    x, y = jnp.asarray(batch["image"]), jnp.asarray(batch["label"])
    source = previous if parameters == "stale" else p
    x_adv = x + eps * jnp.sign(jax.grad(loss, argnums=1)(source, x, y))
    grads = jax.grad(lambda q: 0.5 * loss(q, x, y) + 0.5 * loss(q, x_adv, y))(p)
    previous, p = p, jax.tree.map(lambda w, g: w - lr * g, p, grads)
  assert_trees_close(state.params, p, atol=2e-6)


def padded(batch, num_microbatches, num_devices):
  """Strided microbatches, each padded with masked examples to a multiple of
  the devices (what lbt.data yields for a batch that does not divide)."""
  n = len(batch["label"])
  _, size = slots.microbatch_layout(n, -(-n // num_microbatches), num_devices)
  parts = []
  for part in strided(batch, num_microbatches):
    real = len(part["label"])
    fill = lambda x: np.concatenate([x, np.repeat(x[:1], size - real, axis=0)])
    parts.append({"image": fill(part["image"]), "label": fill(part["label"]),
                  "mask": (np.arange(size) < real).astype(np.float32)})
  return parts


@pytest.mark.parametrize("model_name,num_microbatches", [("linear", 1), ("linear", 3),
                                                         ("mlp", 1)])
def test_a_padded_batch_has_the_gradient_of_its_real_examples(model_name,
                                                              num_microbatches):
  """N = 1,001 examples on 8 devices (padded, masked) vs on 1 device as they are."""
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices")
  model = Linear() if model_name == "linear" else models.create("mlp", num_classes=10,
                                                                hidden_sizes=(32,))
  batch = random_batch(1001, seed=3)
  reference, ref_metrics = run_steps(model, optax.sgd(1.0), [batch],
                                     devices=jax.devices()[:1])
  mesh = Mesh(np.asarray(jax.devices()[:8]), (parallel.DATA_AXIS,))
  tx = lr_input(optax.sgd(1.0))
  init = jax.jit(functools.partial(step.create_train_state, model=model, tx=tx,
                                   input_shape=(28, 28, 1)))
  state = init(jax.random.PRNGKey(0))
  update = programs.compile_update(model, tx, lambda c: 1.0, mesh, num_microbatches,
                                   label_smoothing=0.0)
  sharded = parallel.batch_sharding(mesh)
  parts = padded(batch, num_microbatches, 8)
  assert all(len(p["label"]) % 8 == 0 for p in parts)
  assert sum(int(p["mask"].sum()) for p in parts) == 1001
  state, metrics = update(state, (jax.device_put(p, sharded) for p in parts),
                          jax.tree.map(jnp.copy, state.params), 0.0)
  assert_trees_close(jax.device_get(state.params), reference.params, atol=1e-5)
  assert_trees_close(jax.device_get(state.batch_stats), reference.batch_stats, atol=1e-5)
  np.testing.assert_allclose(metrics["loss"], ref_metrics[0]["loss"], rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"], ref_metrics[0]["accuracy"], atol=1e-7)
