"""Models rewritten for speed compute what their textbook form computes.

Each speed-up in `lbt/models` (see benchmarks/roofline.py for the numbers) is
checked against the plain formulation it replaces, built here from flax's own
layers, with the same parameters: logits to 1e-5 and gradients to 1e-5.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lbt import models
from lbt.models.lenet import max_pool_2x2
from lbt.models.norm import BatchNorm


class TextbookLeNet5(nn.Module):
  """LeNet-5 as lbt wrote it before: nn.Conv, BN, ReLU and nn.max_pool."""

  @nn.compact
  def __call__(self, x, train: bool):
    for i, (features, padding) in enumerate(((6, "SAME"), (16, "VALID"))):
      x = nn.Conv(features, (5, 5), padding=padding, use_bias=False, name=f"conv{i}")(x)
      x = nn.relu(BatchNorm(name=f"conv_bn{i}")(x, train))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    for i, features in enumerate((120, 84)):
      x = nn.Dense(features, use_bias=False, name=f"dense{i}")(x)
      x = nn.relu(BatchNorm(name=f"dense_bn{i}")(x, train))
    return nn.Dense(10, name="head")(x)


def test_max_pool_2x2_against_float64_loops():
  x = np.random.default_rng(0).normal(size=(3, 7, 6, 2)).astype(np.float32)  # odd: floor
  expected = np.zeros((3, 3, 3, 2), np.float32)
  for i in range(3):
    for j in range(3):
      expected[:, i, j] = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max(axis=(1, 2))
  np.testing.assert_array_equal(np.asarray(max_pool_2x2(jnp.asarray(x))), expected)


def test_lenet5_logits_and_gradients_equal_the_textbook_model():
  rng = np.random.default_rng(1)
  images = jnp.asarray(rng.normal(size=(16, 28, 28, 1)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, 16))
  fast = models.create("lenet5", num_classes=10)
  slow = TextbookLeNet5()
  variables = fast.init(jax.random.PRNGKey(0), images[:1], train=False)
  # Same parameter tree, so one set of variables drives both.
  reference_tree = slow.init(jax.random.PRNGKey(0), images[:1], train=False)
  assert jax.tree.structure(reference_tree) == jax.tree.structure(variables)
  # Move the BN scales and biases away from 1 and 0 so that they matter.
  variables = jax.tree.map(
      lambda v: v + 0.1 * jnp.asarray(rng.normal(size=v.shape), v.dtype), variables)

  def loss_and_logits(module, params):
    logits, _ = module.apply({"params": params, "batch_stats": variables["batch_stats"]},
                             images, train=True, mutable=["batch_stats"])
    one_hot = jax.nn.one_hot(labels, 10)
    return -jnp.mean(jnp.sum(one_hot * jax.nn.log_softmax(logits), -1)), logits

  np.testing.assert_allclose(fast.apply(variables, images, train=False),
                             slow.apply(variables, images, train=False), rtol=1e-5, atol=1e-5)
  # Train mode (batch statistics): logits and every parameter's gradient.
  (_, got_logits), got = jax.value_and_grad(
      lambda p: loss_and_logits(fast, p), has_aux=True)(variables["params"])
  (_, want_logits), want = jax.value_and_grad(
      lambda p: loss_and_logits(slow, p), has_aux=True)(variables["params"])
  np.testing.assert_allclose(got_logits, want_logits, rtol=1e-5, atol=1e-5)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
