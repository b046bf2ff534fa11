"""Tests for lbt.models: parameter counts, shapes, and BatchNorm vs NumPy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lbt import models
from lbt.models import resnet
from lbt.models.norm import BatchNorm


def _cifar_resnet_params(n, widths=(16, 32, 64), classes=10):
  """Hand count for He et al.'s 6n+2 CIFAR ResNet with option-A shortcuts.

  A 3x3 conv c_in -> c has 9*c_in*c weights and each BN has 2c; shortcuts
  have none.
  """
  total = 9 * 3 * widths[0] + 2 * widths[0]  # stem conv + BN
  c_in = widths[0]
  for c in widths:
    for _ in range(n):
      total += 9 * c_in * c + 9 * c * c + 2 * (2 * c)  # conv1, conv2, 2 BNs
      c_in = c
  return total + widths[-1] * classes + classes  # Dense with bias


# resnet20 = 464 + 3*4672 + (13952 + 2*18560) + (55552 + 2*73984) + 650.
assert _cifar_resnet_params(3) == 269_722  # "0.27M" in He et al. Table 6.
assert _cifar_resnet_params(5) == 464_154  # "0.46M"
assert _cifar_resnet_params(9) == 853_018  # "0.85M"

PARAM_COUNTS = {
    # name: (num_classes, input shape, parameters)
    "resnet18": (1000, (1, 224, 224, 3), 11_689_512),  # torchvision
    "resnet34": (1000, (1, 224, 224, 3), 21_797_672),  # torchvision
    "resnet50": (1000, (1, 224, 224, 3), 25_557_032),  # torchvision
    "resnet20": (10, (1, 32, 32, 3), _cifar_resnet_params(3)),
    "resnet32": (10, (1, 32, 32, 3), _cifar_resnet_params(5)),
    "resnet56": (10, (1, 32, 32, 3), _cifar_resnet_params(9)),
    "resnet_tiny": (10, (1, 32, 32, 3), _cifar_resnet_params(1, (4, 8, 16))),
    # 784*512 + 512*512 + 512*10 + 10, plus 2*512 per BN; hidden Dense no bias.
    "mlp": (10, (1, 28, 28, 1), 784 * 512 + 512 * 512 + 5130 + 2 * 1024),
    # conv 25*6, conv 25*6*16, FC 400*120, FC 120*84, FC 84*10+10, plus BNs.
    "lenet5": (10, (1, 28, 28, 1),
               150 + 2400 + 48000 + 10080 + 850 + 2 * (6 + 16 + 120 + 84)),
}

SMALL_INPUTS = {
    "mlp": (2, 28, 28, 1), "lenet5": (2, 28, 28, 1),
    "resnet_tiny": (2, 32, 32, 3), "resnet20": (2, 32, 32, 3),
    "resnet32": (2, 32, 32, 3), "resnet56": (2, 32, 32, 3),
    "resnet18": (2, 64, 64, 3), "resnet34": (2, 64, 64, 3),
    "resnet50": (2, 64, 64, 3),
}


def _key(seed=0):
  # XLA:CPU takes ~30 s to compile a ResNet init with the default
  # (partitionable threefry) keys; RngBitGenerator keys compile in ~2 s.
  return jax.random.key(seed, impl="rbg")


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_names():
  assert models.names() == sorted(PARAM_COUNTS)


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_param_count(name):
  num_classes, shape, expected = PARAM_COUNTS[name]
  module = models.create(name, num_classes)
  variables = jax.eval_shape(functools.partial(module.init, train=False),
                             _key(), jnp.zeros(shape))
  assert _count(variables["params"]) == expected


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", sorted(SMALL_INPUTS))
def test_output_shape_and_dtype(name, dtype):
  """Shapes only (eval_shape), so the big nets cost no compile."""
  module = models.create(name, 7, dtype=dtype)
  x = jnp.zeros(SMALL_INPUTS[name])
  variables = jax.eval_shape(functools.partial(module.init, train=False),
                             _key(), x)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
  for train in (False, True):
    out = jax.eval_shape(functools.partial(
        module.apply, train=train, mutable=["batch_stats"] if train else False),
        variables, x)
    logits = out[0] if train else out
    assert logits.shape == (x.shape[0], 7) and logits.dtype == jnp.float32


@pytest.mark.parametrize("name,kwargs,shape,dtype", [
    ("mlp", {"hidden_sizes": (32, 16, 8)}, (8, 28, 28, 1), jnp.float32),
    ("lenet5", {}, (8, 28, 28, 1), jnp.float32),
    ("lenet5", {"width": 2}, (8, 28, 28, 1), jnp.bfloat16),
    # Odd sizes: the option-A shortcut must match the strided conv's output.
    ("resnet_tiny", {}, (4, 9, 11, 3), jnp.bfloat16),
])
def test_small_models_run(name, kwargs, shape, dtype):
  module = models.create(name, 5, ghost_size=4, dtype=dtype, **kwargs)
  x = jax.random.normal(_key(1), shape)
  variables = jax.jit(functools.partial(module.init, train=False))(
      _key(), x)
  logits, updates = jax.jit(functools.partial(
      module.apply, train=True, mutable=["batch_stats"]))(variables, x)
  assert logits.shape == (shape[0], 5) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(
      variables["batch_stats"])


def test_lenet_width_scales_layers():
  variables = jax.eval_shape(
      functools.partial(models.create("lenet5", 10, width=2).init, train=False),
      _key(), jnp.zeros((1, 28, 28, 1)))
  assert [variables["params"][k]["kernel"].shape[-1]
          for k in ("conv0", "conv1", "dense0", "dense1")] == [12, 32, 240, 168]


def test_create_errors():
  with pytest.raises(KeyError, match="resnet50"):
    models.create("resnet51", 10)
  with pytest.raises(TypeError, match="lenet5.*hidden_sizes"):
    models.create("lenet5", 10, hidden_sizes=(3,))
  with pytest.raises(ValueError, match="bn.ghost_size"):
    models.create("mlp", 10, ghost_size=-1)


# --- BatchNorm against an independent float64 NumPy reference. -------------


def _np_batch_norm(x, scale, bias, mean, var, *, ghost_size, momentum, eps):
  """Normalizes each ghost batch on its own, one at a time.

  Ghost batch j of n examples is examples j, j + n/g, j + 2n/g, ... (the
  interleaved grouping documented in lbt.models.norm).
  """
  x = np.asarray(x, np.float64)
  n = x.shape[0]
  num_groups = n // (ghost_size or n)
  y = np.empty_like(x)
  means, variances = [], []
  for j in range(num_groups):
    members = np.arange(j, n, num_groups)
    chunk = x[members].reshape(-1, x.shape[-1])
    mu = chunk.mean(axis=0)
    sigma2 = ((chunk - mu) ** 2).mean(axis=0)  # biased
    y[members] = (x[members] - mu) / np.sqrt(sigma2 + eps) * scale + bias
    means.append(mu)
    variances.append(sigma2)
  new_mean = momentum * mean + (1 - momentum) * np.mean(means, axis=0)
  new_var = momentum * var + (1 - momentum) * np.mean(variances, axis=0)
  return y, new_mean, new_var


def _bn_setup(shape, seed=0, **bn_kwargs):
  """A BatchNorm with random params and running stats, and an offset input."""
  rng = np.random.default_rng(seed)
  c = shape[-1]
  x = (3.0 + 2.0 * rng.standard_normal(shape)).astype(np.float32)
  variables = {
      "params": {"scale": rng.uniform(0.5, 2, c).astype(np.float32),
                 "bias": rng.standard_normal(c).astype(np.float32)},
      "batch_stats": {"mean": rng.standard_normal(c).astype(np.float32),
                      "var": rng.uniform(0.5, 2, c).astype(np.float32)},
  }
  return BatchNorm(**bn_kwargs), variables, x


def _apply_train(bn, variables, x):
  return bn.apply(variables, x, train=True, mutable=["batch_stats"])


@pytest.mark.parametrize("shape", [(16, 5), (16, 3, 4, 5)])
@pytest.mark.parametrize("ghost_size", [0, 1, 2, 4, 16])
@pytest.mark.parametrize("momentum", [0.9, 0.5])
def test_batch_norm_train_matches_numpy(shape, ghost_size, momentum):
  bn, variables, x = _bn_setup(shape, ghost_size=ghost_size, momentum=momentum,
                               epsilon=1e-3)
  y, updates = jax.jit(functools.partial(_apply_train, bn))(variables, x)
  want_y, want_mean, want_var = _np_batch_norm(
      x, *[np.float64(v) for v in (*variables["params"].values(),
                                   *variables["batch_stats"].values())],
      ghost_size=ghost_size, momentum=momentum, eps=1e-3)
  np.testing.assert_allclose(y, want_y, atol=1e-5, rtol=0)
  np.testing.assert_allclose(updates["batch_stats"]["mean"], want_mean,
                             atol=1e-5, rtol=0)
  np.testing.assert_allclose(updates["batch_stats"]["var"], want_var,
                             atol=1e-5, rtol=0)


def test_ghost_size_equal_to_batch_is_full_batch_norm():
  _, variables, x = _bn_setup((8, 2, 2, 3))
  full = _apply_train(BatchNorm(ghost_size=0), variables, x)
  ghost = _apply_train(BatchNorm(ghost_size=8), variables, x)
  jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-6),
               full, ghost)


def test_ghost_size_must_divide_batch():
  bn, variables, x = _bn_setup((10, 3), ghost_size=4)
  with pytest.raises(ValueError, match="bn.ghost_size"):
    _apply_train(bn, variables, x)


def test_ghost_batches_survive_strided_microbatching():
  """BN of a batch equals BN of its strided microbatches x[k::m] (lbt.engine.step)."""
  bn, variables, x = _bn_setup((24, 2, 2, 3), ghost_size=3)
  full, _ = _apply_train(bn, variables, x)
  for k in range(4):
    part, _ = _apply_train(bn, variables, x[k::4])
    np.testing.assert_allclose(part, full[k::4], atol=1e-6)


def test_ghost_gradient_is_per_group_gradient():
  """The vectorised reshape must not mix groups in the backward pass either."""
  _, variables, x = _bn_setup((12, 2, 2, 3))
  w = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)

  def grad(bn, xs, ws):
    f = lambda xs: jnp.sum(_apply_train(bn, variables, xs)[0] * ws)
    return jax.jit(jax.grad(f))(xs)

  got = grad(BatchNorm(ghost_size=4), x, w)
  for j in range(3):  # ghost batch j = examples j, j + 3, j + 6, j + 9
    np.testing.assert_allclose(got[j::3], grad(BatchNorm(), x[j::3], w[j::3]),
                               atol=1e-5)


def test_eval_uses_running_stats():
  bn, variables, x = _bn_setup((6, 2, 2, 3), ghost_size=2)
  y = bn.apply(variables, x, train=False)
  stats = variables["batch_stats"]
  want = ((x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5)
          * variables["params"]["scale"] + variables["params"]["bias"])
  np.testing.assert_allclose(y, want, atol=1e-5)
  # Each output depends on its own example only.
  x2 = x.copy()
  x2[1:] = 100.0
  np.testing.assert_array_equal(bn.apply(variables, x2, train=False)[0], y[0])


def test_init_leaves_running_stats_alone():
  variables = BatchNorm().init(_key(), jnp.full((4, 3), 5.0),
                               train=True)
  np.testing.assert_array_equal(variables["batch_stats"]["mean"], 0.0)
  np.testing.assert_array_equal(variables["batch_stats"]["var"], 1.0)


def test_bfloat16_output_float32_state():
  bn, variables, x = _bn_setup((8, 3), dtype=jnp.bfloat16)
  y, updates = _apply_train(bn, variables, x.astype(jnp.bfloat16))
  assert y.dtype == jnp.bfloat16
  assert updates["batch_stats"]["var"].dtype == jnp.float32


@pytest.mark.parametrize("ghost_size", [0, 2, 8])
def test_sharded_batch_norm_equals_unsharded(ghost_size):
  """Under jit on a data mesh, statistics still cover the global batch.

  ghost_size=8 spans two devices' shards (32 examples / 8 devices).
  """
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_"
                "device_count=8)")
  mesh = Mesh(jax.devices()[:8], ("data",))
  bn, variables, x = _bn_setup((32, 3, 3, 4), ghost_size=ghost_size)
  step = jax.jit(functools.partial(_apply_train, bn))
  want = step(variables, x)
  x_sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
  got = step(variables, x_sharded)
  assert len(x_sharded.sharding.device_set) == 8
  jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-5),
               got, want)


# --- zero-init residual (Goyal et al.). ------------------------------------


def _bn_scales(params):
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {"/".join(k.key for k in path[:-1]): v for path, v in flat
          if path[-1].key == "scale"}


def _mini_resnet(block_cls, zero_init_residual):
  """An ImageNet-family ResNet small enough to initialise for real."""
  return resnet.ResNet(stage_sizes=(1, 1), block_cls=block_cls, num_classes=10,
                       num_filters=4, zero_init_residual=zero_init_residual)


_TINY = lambda z: models.create("resnet_tiny", 10, zero_init_residual=z)


@pytest.mark.parametrize("make,last_bn,num_blocks,zero_init", [
    (_TINY, "bn2", 3, True),
    (lambda z: _mini_resnet(resnet.BasicBlock, z), "bn2", 2, True),
    (lambda z: _mini_resnet(resnet.Bottleneck, z), "bn3", 2, True),
    (lambda z: _mini_resnet(resnet.Bottleneck, z), "bn3", 2, False),
])
def test_zero_init_residual(make, last_bn, num_blocks, zero_init):
  module = make(zero_init)
  params = jax.jit(functools.partial(module.init, train=False))(
      _key(), jnp.zeros((1, 16, 16, 3)))["params"]
  scales = _bn_scales(params)
  last = [k for k in scales if k.endswith("/" + last_bn)]
  assert len(last) == num_blocks
  for path, scale in scales.items():
    np.testing.assert_array_equal(
        scale, 0.0 if zero_init and path in last else 1.0, err_msg=path)


def test_zero_init_residual_is_default():
  for name in ("resnet18", "resnet34", "resnet50", "resnet20", "resnet_tiny"):
    assert models.create(name, 10).zero_init_residual


def test_resnet50_is_v1_5():
  """The downsampling block strides on its 3x3 conv, not the first 1x1."""
  module = models.create("resnet50", 10)
  x = jnp.zeros((1, 64, 64, 3))
  variables = jax.eval_shape(functools.partial(module.init, train=False),
                             _key(), x)
  _, state = jax.eval_shape(functools.partial(
      module.apply, train=False, capture_intermediates=True,
      mutable=["intermediates"]), variables, x)
  block = state["intermediates"]["stage2_block1"]
  shape = lambda layer: block[layer]["__call__"][0].shape
  assert shape("conv1") == (1, 16, 16, 128)
  assert shape("conv2") == (1, 8, 8, 128)
  assert shape("proj_conv") == (1, 8, 8, 512)
