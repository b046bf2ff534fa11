"""LANS, CLARS and the VRGD family against float64 NumPy references.

The LANS, CLARS and GSNR equations are written out below from their papers
(docstrings of lbt.optim.lans/clars/gsnr cite them), not from lbt code; the
base rules VRGD wraps (LARS, Adam, LAMB, momentum) reuse tests/optim/test_optim.py's
references. Gradients come from K = 4 "examples" (CLARS) or "microbatches"
(VRGD) per update, whose statistics are computed here in NumPy and passed as
the extra arguments the train step will pass. 25 updates of a tree with biases,
a BN scale, an all-zero kernel and a kernel whose gradient is 0 for the first
three updates, under a warmup + poly schedule.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from lbt import optim
from lbt.errors import ConfigError
from lbt.engine.step import mean_per_example_grad_norm
from lbt.optim import gsnr
from test_optim import (SCHEDULE, SHAPES, STEPS, STEPS_PER_EPOCH, _flat, _nest,
                        _norm, ref_adam_family, ref_lars, ref_lr, ref_momentum)

K = 4  # examples (CLARS) or microbatches (VRGD) per update


def _problem():
  """w0 and per_example(w, t) -> K gradients, each a dict like w0.

  Each coordinate gets its own noise scale, so the GSNR varies within a layer.
  """
  rng = np.random.default_rng(1)
  w0 = {k: rng.normal(size=s) for k, s in SHAPES.items()}
  w0["BatchNorm_0/scale"] = 1 + 0.1 * rng.normal(size=4)
  w0["Dense_0/kernel"] = np.zeros(SHAPES["Dense_0/kernel"])  # ||w|| = 0
  targets = {k: rng.normal(size=s) for k, s in SHAPES.items()}
  scales = {k: rng.uniform(0.1, 2.0, size=s) for k, s in SHAPES.items()}
  noise = rng.normal(size=(STEPS, K, sum(int(np.prod(s)) for s in SHAPES.values())))

  def per_example(w, t):
    out, offset = [], 0
    for i in range(K):
      g, offset = {}, 0
      for k, s in SHAPES.items():
        size = int(np.prod(s))
        eps = noise[t, i, offset:offset + size].reshape(s)
        g[k] = 0.5 * (w[k] - targets[k]) + 0.6 * scales[k] * eps
        offset += size
      if t < 3:
        g["Dense_1/kernel"] = np.zeros(SHAPES["Dense_1/kernel"])
      out.append(g)
    return out

  return w0, per_example


def _mean(examples):
  return {k: np.mean([g[k] for g in examples], axis=0) for k in examples[0]}


def clars_extras(examples):
  norms = {k: np.mean([_norm(g[k]) for g in examples]) for k in examples[0]}
  return dict(per_example_grad_norm=norms)


def gsnr_extras(examples):
  sq = {k: np.mean([g[k] ** 2 for g in examples], axis=0) for k in examples[0]}
  return dict(microbatch_grad_sq=sq, num_microbatches=len(examples))


def run_lbt(make_tx, w0, per_example, peak, extras):
  """25 float64 updates of make_tx(schedule) with the mean gradient and extras."""
  with jax.enable_x64(True):
    schedule = optim.create_schedule(ml_collections.ConfigDict(SCHEDULE), peak,
                                     STEPS_PER_EPOCH, STEPS)
    tx = make_tx(schedule)
    params = jax.tree.map(jnp.asarray, _nest(w0))
    state = tx.init(params)
    nested = lambda tree: jax.tree.map(jnp.asarray, _nest(tree))

    @jax.jit
    def step(g, arrays, state, params):
      updates, state = tx.update(g, state, params, **arrays, **scalars)
      return optax.apply_updates(params, updates), state

    for t in range(STEPS):
      examples = per_example(_flat(params), t)
      extra = extras(examples)
      scalars = {k: v for k, v in extra.items() if not isinstance(v, dict)}
      arrays = {k: nested(v) for k, v in extra.items() if isinstance(v, dict)}
      params, state = step(nested(_mean(examples)), arrays, state, params)
      assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(params))
    return _flat(params)


# --------------------------------------------------------------------------
# References written from the papers.

def ref_lans(w, per_example, peak, b1, b2, eps, beta, excluded):
  """Zheng et al. 2020 (reference kernel): normalised g, two scaled directions."""
  w = {k: v.copy() for k, v in w.items()}
  m = {k: np.zeros_like(x) for k, x in w.items()}
  v = {k: np.zeros_like(x) for k, x in w.items()}
  for t in range(1, STEPS + 1):
    g, lr = _mean(per_example(w, t - 1)), ref_lr(t - 1, peak)
    for k in w:
      gn = _norm(g[k])
      gt = g[k] / (gn + eps) if gn > 0 else g[k]
      m[k] = b1 * m[k] + (1 - b1) * gt
      v[k] = b2 * v[k] + (1 - b2) * gt * gt
      d = np.sqrt(v[k] / (1 - b2 ** t)) + eps
      r, c = m[k] / (1 - b1 ** t) / d, gt / d
      pr = pc = 1.0
      if not excluded(k, w[k]):
        r, c = r + beta * w[k], c + beta * w[k]
        wn = _norm(w[k])
        pr = wn / _norm(r) if wn > 0 and _norm(r) > 0 else 1.0
        pc = wn / _norm(c) if wn > 0 and _norm(c) > 0 else 1.0
      w[k] = w[k] - lr * (b1 * pr * r + (1 - b1) * pc * c)
  return w


def ref_clars(w, per_example, peak, m, beta, eta, eps, nesterov):
  """LARS with lambda = eta*||w|| / (mean_i ||g_i|| + beta*||w|| + eps)."""
  w = {k: x.copy() for k, x in w.items()}
  v = {k: np.zeros_like(x) for k, x in w.items()}
  for t in range(STEPS):
    examples, lr = per_example(w, t), ref_lr(t, peak)
    g = _mean(examples)
    for k in w:
      if w[k].ndim <= 1:
        d = lr * g[k]
      else:
        wn, n = _norm(w[k]), np.mean([_norm(e[k]) for e in examples])
        lam = eta * wn / (n + beta * wn + eps) if wn > 0 and n > 0 else 1.0
        d = lr * lam * (g[k] + beta * w[k])
      v[k] = m * v[k] + d
      w[k] = w[k] - (m * v[k] + d if nesterov else v[k])
  return w


def gsnr_gradients(per_example, low, high, b3):
  """grads(w, t) -> p_hat * G (Jiang et al. 2023, Algorithm 1, eqs. 2, 7-9).

  Called once per update in order, as the base references do, so the b3
  average can live in this closure. Coordinates with sigma = 0 have r = 0 here
  when G = 0 too (the only case this problem produces: Dense_1 for t < 3).
  """
  average, count = {}, [0]

  def grads(w, t):
    examples = per_example(w, t)
    out = {}
    count[0] += 1
    for k in w:
      gk = np.stack([e[k] for e in examples])
      big_g = gk.mean(axis=0)
      variance = (gk ** 2).mean(axis=0) - big_g ** 2
      assert np.all((variance > 0) | (big_g == 0))
      r = np.divide(big_g ** 2, variance, out=np.zeros_like(big_g), where=variance > 0)
      r = r / r.mean() if r.mean() > 0 else np.zeros_like(r)
      r = np.clip(r, low, high)
      if b3:
        average[k] = b3 * average.get(k, 0) + (1 - b3) * r
        r = average[k] / (1 - b3 ** count[0])
      out[k] = r * big_g
    return out

  return grads


LANS_KW = dict(b1=0.9, b2=0.99, eps=1e-6, weight_decay=0.05)
CLARS_KW = dict(momentum=0.9, weight_decay=0.01, trust_coefficient=0.5, eps=1e-3)
LARS_KW = dict(momentum=0.9, weight_decay=0.01, trust_coefficient=0.02, eps=1e-3)
ADAM_KW = dict(b1=0.9, b2=0.99, weight_decay=0.05)
BAND = dict(gamma_low=0.1, gamma_high=1.0)
VR = lambda b3: lambda pe: gsnr_gradients(pe, 0.1, 1.0, b3)
LANS_EXCLUDE = lambda k, x: k.startswith("Dense_1") or "bias" in k

CASES = {  # name: (lbt from schedule, peak LR, reference(w0, per_example, peak), extras)
    "lans": (lambda s: optim.lans(s, **LANS_KW), 0.05,
             lambda *a: ref_lans(*a, 0.9, 0.99, 1e-6, 0.05, lambda k, x: x.ndim <= 1),
             lambda e: {}),
    "lans_exclude": (  # Dense_1/kernel not adapted; BatchNorm_0/scale adapted
        lambda s: optim.lans(s, exclude=(r"^Dense_1/", "bias"), **LANS_KW), 0.05,
        lambda *a: ref_lans(*a, 0.9, 0.99, 1e-6, 0.05, LANS_EXCLUDE), lambda e: {}),
    "clars": (lambda s: optim.clars(s, **CLARS_KW), 0.5,
              lambda *a: ref_clars(*a, 0.9, 0.01, 0.5, 1e-3, False), clars_extras),
    "clars_nesterov": (lambda s: optim.clars(s, nesterov=True, **CLARS_KW), 0.5,
                       lambda *a: ref_clars(*a, 0.9, 0.01, 0.5, 1e-3, True),
                       clars_extras),
    "vr_sgd": (lambda s: optim.vr_sgd(s, weight_decay=0.01, **BAND), 0.1,
               lambda w, pe, p: ref_momentum(w, VR(0)(pe), p, 0.0, 0.01, False),
               gsnr_extras),
    "vr_momentum": (lambda s: optim.vr_momentum(s, 0.9, 0.01, **BAND), 0.1,
                    lambda w, pe, p: ref_momentum(w, VR(0)(pe), p, 0.9, 0.01, False),
                    gsnr_extras),
    "vr_lars": (lambda s: optim.vr_lars(s, **LARS_KW, **BAND), 1.0,
                lambda w, pe, p: ref_lars(w, VR(0)(pe), p, 0.9, 0.01, 0.02, 1e-3,
                                          False), gsnr_extras),
    "vr_adam": (lambda s: optim.vr_adam(s, eps=1e-8, b3=0.9, **ADAM_KW, **BAND), 0.05,
                lambda w, pe, p: ref_adam_family(w, VR(0.9)(pe), p, 0.9, 0.99, 1e-8,
                                                 0.05, "adam"), gsnr_extras),
    "vr_lamb": (lambda s: optim.vr_lamb(s, eps=1e-6, b3=0.9, **ADAM_KW, **BAND), 0.05,
                lambda w, pe, p: ref_adam_family(w, VR(0.9)(pe), p, 0.9, 0.99, 1e-6,
                                                 0.05, "lamb"), gsnr_extras),
}


def _compare(make_tx, case):
  _, peak, reference, extras = CASES[case]
  w0, per_example = _problem()
  want = reference(w0, per_example, peak)
  got = run_lbt(make_tx, w0, per_example, peak, extras)
  errors = {k: np.max(np.abs(got[k] - want[k]))
               / max(np.max(np.abs(want[k] - w0[k])), 1e-30) for k in want}
  return max(errors.values()), want, w0


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_numpy_reference(case):
  error, want, w0 = _compare(CASES[case][0], case)
  assert error <= 1e-6
  assert all(np.max(np.abs(want[k] - w0[k])) > 1e-3 for k in want)  # all move


def _lans_without_current_gradient(schedule):
  """Wrong: LAMB on the normalised gradient (the b1-weighted direction only)."""
  def normalise(g):
    n = jnp.sqrt(jnp.sum(g * g))
    return jnp.where(n > 0, g / (n + 1e-6), g)
  normalise_tx = optax.GradientTransformation(
      lambda p: optax.EmptyState(),
      lambda u, s, p=None: (jax.tree.map(normalise, u), s))
  return optax.chain(normalise_tx, optim.lamb(schedule, **LANS_KW))


def _clars_with_batch_norm(schedule):
  """Wrong: per_example_grad_norm replaced by the averaged gradient's norm."""
  tx = optim.clars(schedule, **CLARS_KW)

  def update(g, state, params=None, per_example_grad_norm=None, **extra):
    del per_example_grad_norm
    norms = jax.tree.map(lambda x: jnp.sqrt(jnp.sum(x * x)), g)
    return tx.update(g, state, params, per_example_grad_norm=norms, **extra)

  return optax.GradientTransformationExtraArgs(tx.init, update)


def _gsnr_not_normalised(g, s, low, high):
  """Wrong: the raw GSNR clipped to the band, no per-layer normalisation."""
  r = g * g / jnp.maximum(s - g * g, 1e-30)
  return jnp.clip(r, low, high)


WRONG = {  # each must FAIL the comparison against the published rule
    "lans_without_current_gradient": (_lans_without_current_gradient, "lans"),
    "clars_with_batch_gradient_norm": (_clars_with_batch_norm, "clars"),
    "vr_lars_without_normalisation": (CASES["vr_lars"][0], "vr_lars"),  # patched
    "vr_adam_without_gsnr_average": (
        lambda s: optim.vr_adam(s, eps=1e-8, b3=0.0, **ADAM_KW, **BAND), "vr_adam"),
}


@pytest.mark.parametrize("wrong", sorted(WRONG))
def test_reference_comparison_catches_wrong_variants(wrong, monkeypatch):
  if wrong == "vr_lars_without_normalisation":  # looked up at trace time
    monkeypatch.setattr(gsnr, "gsnr_ratio", _gsnr_not_normalised)
  assert _compare(*WRONG[wrong])[0] > 1e-3


def test_gsnr_ratio_hand_computed():
  ratio = lambda g, sq: np.asarray(gsnr.gsnr_ratio(jnp.array(g), jnp.array(sq), 0.1, 1.0))
  # Microbatches [2, 0, 3] and [0, 2, 1]: G = [1, 1, 2], mean g^2 = [2, 2, 5],
  # sigma^2 = [1, 1, 1], r = [1, 1, 4], layer mean 2 -> [0.5, 0.5, 2], clipped
  # to [0.1, 1] -> [0.5, 0.5, 1].
  np.testing.assert_allclose(ratio([1.0, 1.0, 2.0], [2.0, 2.0, 5.0]), [0.5, 0.5, 1.0],
                             rtol=1e-6)
  # Invariant to the gradient scale and to k/(k-1) (unbiased variance): G -> 3G,
  # sigma^2 -> 9 * 2 * sigma^2 gives r/2 everywhere, the same normalised ratio.
  np.testing.assert_allclose(ratio([3.0, 3.0, 6.0], [27.0, 27.0, 54.0]),
                             [0.5, 0.5, 1.0], rtol=1e-6)
  # sigma = 0 < |G| (microbatches [1, 3, 3] and [1, -1, 1]): infinite GSNR, so
  # that coordinate holds the whole layer mean: 3/1 -> 1, the others 0 -> 0.1.
  np.testing.assert_allclose(ratio([1.0, 1.0, 2.0], [1.0, 5.0, 5.0]), [1.0, 0.1, 0.1])
  # No signal anywhere (a dead layer): gamma_low. A variance float32 cannot
  # resolve next to G^2 = 1e36 counts as 0 (infinite GSNR), with no inf/nan.
  np.testing.assert_allclose(ratio([0.0, 0.0], [0.0, 0.0]), [0.1, 0.1])
  np.testing.assert_allclose(ratio([1e18, 1.0, 1.0], [1e36 + 1e-3, 2.0, 2.0]),
                             [1.0, 0.1, 0.1])


def test_mean_per_example_grad_norm_closed_form():
  # f_i = 0.5*(x_i . w + b - y_i)^2: grad_w = e_i x_i, grad_b = e_i, so the
  # leaves are mean_i |e_i| ||x_i|| and mean_i |e_i|, e_i the residual.
  rng = np.random.default_rng(2)
  x, y = rng.normal(size=(5, 3)), rng.normal(size=5)
  params = {"w": rng.normal(size=3), "b": np.array(0.3)}
  loss = lambda p, xi, yi: 0.5 * (xi @ p["w"] + p["b"] - yi) ** 2
  with jax.enable_x64(True):
    got = mean_per_example_grad_norm(
        loss, jax.tree.map(jnp.asarray, params), jnp.asarray(x), jnp.asarray(y))
  e = x @ params["w"] + params["b"] - y
  assert float(got["w"]) == pytest.approx(np.mean(np.abs(e) * np.linalg.norm(x, axis=1)),
                                          rel=1e-12)
  assert float(got["b"]) == pytest.approx(np.mean(np.abs(e)), rel=1e-12)


def test_needs_and_missing_extra_arguments():
  assert optim.OPTIMIZERS.get("clars").needs == ("per_example_grad_norm",)
  for name in ("vr_sgd", "vr_momentum", "vr_lars", "vr_adam", "vr_lamb"):
    assert optim.OPTIMIZERS.get(name).needs == ("microbatch_grad_sq",
                                                "num_microbatches")
  assert getattr(optim.OPTIMIZERS.get("lans"), "needs", ()) == ()
  params = {"Dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
  tx = optim.clars(0.1)
  with pytest.raises(ValueError, match="per_example_grad_norm"):
    tx.update(grads, tx.init(params), params)
  tx = optim.vr_lars(0.1)
  with pytest.raises(ValueError, match="microbatch_grad_sq"):
    tx.update(grads, tx.init(params), params)
  with pytest.raises(ValueError, match="num_microbatches >= 2"):
    tx.update(grads, tx.init(params), params, microbatch_grad_sq=grads,
              num_microbatches=1)


@pytest.mark.parametrize("kwargs, field", [
    (dict(gamma_low=0.0), "optimizer.gamma_low"),
    (dict(gamma_low=0.5, gamma_high=0.2), "optimizer.gamma_high"),
    (dict(gamma_high=float("nan")), "optimizer.gamma_high"),
    (dict(b3=1.0), "optimizer.b3"),
])
def test_band_errors_name_the_field(kwargs, field):
  with pytest.raises(ConfigError) as e:
    optim.create_by_name("vr_adam", 0.1, **kwargs)
  assert e.value.field == field


def test_lans_trust_ratios_are_logged():
  # First update, b1 = b2 = 0.5, no decay: g~ = g/(|g| + eps) = [0, 1]/(1+eps),
  # v_hat = g~^2, so r = c = g~/(|g~| + eps) and both ratios are 5/|r| with
  # |r| = (1/(1+e))/((1/(1+e)) + e), e = 1e-6; the zero kernel's ratios are 1.
  params = {"a": {"kernel": jnp.array([[3.0, 4.0]])}, "b": {"kernel": jnp.zeros((1, 2))}}
  grads = {"a": {"kernel": jnp.array([[0.0, 1.0]])}, "b": {"kernel": jnp.ones((1, 2))}}
  tx = optim.lans(1.0, b1=0.5, b2=0.5)
  stats = optim.trust_ratio_stats(tx.update(grads, tx.init(params), params)[1])
  e = 1e-6
  r = (1 / (1 + e)) / (1 / (1 + e) + e)
  assert {k: float(v) for k, v in stats.items()} == pytest.approx(
      {"trust_ratio_min": 1.0, "trust_ratio_mean": (1 + 5 / r) / 2,
       "trust_ratio_max": 5 / r}, rel=1e-6)
