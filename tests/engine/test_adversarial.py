"""ConAdv's adversarial examples and loss against a float64 closed form.

For a linear softmax model, logits = x W + b and L = mean_i CE(softmax(x_i W +
b), y_i), the input gradient is (P - Y) W^T / B and the weight gradient
x^T (P - Y) / B (P the softmax, Y the one-hot labels): the references below are
written from these formulas, with no autodiff.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from lbt.engine import adversarial
from lbt.errors import ConfigError

B, D, C = 6, 5, 3


def loss_fn(params, inputs, labels):
  logits = inputs @ params["w"] + params["b"]
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def _softmax_minus_onehot(params, x, y):
  z = x @ params["w"] + params["b"]
  p = np.exp(z - z.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  return p - np.eye(C)[y]


def ref_examples(params, x, y, step_size, num_steps, epsilon):
  """Sign steps on (P - Y) W^T / B, projected onto |x_adv - x|_inf <= epsilon."""
  adv = x.copy()
  for _ in range(num_steps):
    grad = _softmax_minus_onehot(params, adv, y) @ params["w"].T / B
    adv = adv + step_size * np.sign(grad)
    if epsilon is not None:
      adv = np.clip(adv, x - epsilon, x + epsilon)
  return adv


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  make = lambda: {"w": rng.normal(size=(D, C)), "b": rng.normal(size=C)}
  stale, fresh = make(), make()
  return stale, fresh, rng.normal(size=(B, D)), rng.integers(0, C, size=B)


def _lbt_examples(params, x, y, **kwargs):
  with jax.enable_x64(True):
    f = jax.jit(lambda p, x, y: adversarial.adversarial_examples(
        loss_fn, p, x, y, **kwargs))
    out = f(jax.tree.map(jnp.asarray, params), jnp.asarray(x), jnp.asarray(y))
    assert out.dtype == jnp.float64
    return np.asarray(out)


@pytest.mark.parametrize("step_size, num_steps, epsilon", [
    (0.2, 1, 0.2),    # FGSM: x + epsilon * sign(grad_x)
    (0.1, 4, 0.25),   # PGD whose projection binds (4 * 0.1 > 0.25)
    (0.05, 3, None),  # no projection
])
def test_examples_match_closed_form_with_the_given_params(step_size, num_steps, epsilon):
  stale, fresh, x, y = _problem()
  kwargs = dict(step_size=step_size, num_steps=num_steps, epsilon=epsilon)
  got = _lbt_examples(stale, x, y, **kwargs)
  np.testing.assert_allclose(got, ref_examples(stale, x, y, **kwargs), rtol=0, atol=1e-12)
  bound = num_steps * step_size if epsilon is None else epsilon
  assert np.max(np.abs(got - x)) == pytest.approx(bound)
  # Built with the stale params, not the current ones: the two differ here.
  assert np.max(np.abs(got - ref_examples(fresh, x, y, **kwargs))) > 0.05


def test_comparison_catches_a_missing_projection():
  stale, _, x, y = _problem()
  want = ref_examples(stale, x, y, 0.1, 4, 0.25)
  unprojected = _lbt_examples(stale, x, y, step_size=0.1, num_steps=4, epsilon=None)
  assert np.max(np.abs(unprojected - want)) > 0.05


def test_combined_loss_and_its_gradient_match_closed_form():
  _, fresh, x, y = _problem(1)
  a = 0.3
  with jax.enable_x64(True):
    def total(params):  # fresh: the examples use the differentiated params
      adv = adversarial.adversarial_examples(loss_fn, params, x, y, step_size=0.1,
                                             num_steps=2, epsilon=0.15)
      return adversarial.combined_loss(loss_fn, params, x, adv, y, a)
    value, grad = jax.value_and_grad(total)(jax.tree.map(jnp.asarray, fresh))
  adv = ref_examples(fresh, x, y, 0.1, 2, 0.15)

  def ce(inputs):
    z = inputs @ fresh["w"] + fresh["b"]
    log_p = z - z.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    return -log_p[np.arange(B), y].mean()

  assert float(value) == pytest.approx((1 - a) * ce(x) + a * ce(adv), rel=1e-12)
  assert ce(adv) > ce(x)  # the perturbation ascends the loss
  # x_adv is data: the gradient is the weighted sum of the two closed forms.
  want_w = sum(c * inputs.T @ _softmax_minus_onehot(fresh, inputs, y) / B
               for c, inputs in ((1 - a, x), (a, adv)))
  want_b = sum(c * _softmax_minus_onehot(fresh, inputs, y).sum(axis=0) / B
               for c, inputs in ((1 - a, x), (a, adv)))
  np.testing.assert_allclose(grad["w"], want_w, rtol=1e-10)
  np.testing.assert_allclose(grad["b"], want_b, rtol=1e-10)


GOOD = dict(enabled=True, step_size=0.01, num_steps=1, epsilon=0.01,
            parameters="stale", weight=0.5)


@pytest.mark.parametrize("key, value, field", [
    ("step_size", 0.0, "loss.adversarial.step_size"),
    ("num_steps", 0, "loss.adversarial.num_steps"),
    ("num_steps", 1.0, "loss.adversarial.num_steps"),
    ("epsilon", -0.1, "loss.adversarial.epsilon"),
    ("parameters", "old", "loss.adversarial.parameters"),
    ("weight", 1.5, "loss.adversarial.weight"),
    ("enabled", "yes", "loss.adversarial.enabled"),
    ("steps", 3, "loss.adversarial.steps"),
])
def test_config_errors_name_the_field(key, value, field):
  adversarial.check(ml_collections.ConfigDict(GOOD))  # the good section passes
  with pytest.raises(ConfigError) as e:
    adversarial.check(ml_collections.ConfigDict({**GOOD, key: value}))
  assert e.value.field == field
