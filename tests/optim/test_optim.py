"""Tests for lbt.optim against independent float64 NumPy references.

The references below are written from the update equations (docstrings of
lbt.optim and /work/shared/paper.md section 5), not from lbt or optax code.
Each comparison runs 25 updates of a small tree with biases, a BN scale, an
all-zero kernel (trust ratio 1) and a kernel whose gradient is zero for the
first updates (trust ratio 1 again), under a warmup + poly schedule.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from lbt import optim
from lbt.errors import ConfigError

STEPS, STEPS_PER_EPOCH = 25, 4
SCHEDULE = dict(name="poly", warmup_epochs=1.5, end_learning_rate=0.0, power=2.0)
SHAPES = {"Conv_0/kernel": (3, 3, 2, 4), "Conv_0/bias": (4,),
          "BatchNorm_0/scale": (4,), "BatchNorm_0/bias": (4,),
          "Dense_0/kernel": (8, 3), "Dense_0/bias": (3,), "Dense_1/kernel": (3, 5)}


def _nest(flat):
  tree = {}
  for name, value in flat.items():
    layer, param = name.split("/")
    tree.setdefault(layer, {})[param] = value
  return tree


def _flat(tree):
  return {f"{l}/{p}": np.asarray(v) for l, d in tree.items() for p, v in d.items()}


def _problem():
  rng = np.random.default_rng(0)
  w0 = {k: rng.normal(size=s) for k, s in SHAPES.items()}
  w0["BatchNorm_0/scale"] = 1 + 0.1 * rng.normal(size=4)
  w0["Dense_0/kernel"] = np.zeros(SHAPES["Dense_0/kernel"])  # ||w|| = 0
  targets = {k: rng.normal(size=s) for k, s in SHAPES.items()}
  noise = [{k: rng.normal(size=s) for k, s in SHAPES.items()} for _ in range(STEPS)]

  def grads(w, t):
    """Gradient of a quadratic plus fixed noise; Dense_1's is 0 for t < 3."""
    g = {k: 0.5 * (w[k] - targets[k]) + 0.3 * noise[t][k] for k in w}
    if t < 3:
      g["Dense_1/kernel"] = np.zeros_like(g["Dense_1/kernel"])
    return g

  return w0, grads


def ref_lr(c, peak):
  """Warmup P(c+1)/W, then end + (P-end)(1 - k/(D-1))^2, here end = 0."""
  w = round(SCHEDULE["warmup_epochs"] * STEPS_PER_EPOCH)  # 6
  if c < w:
    return peak * (c + 1) / w
  k = min(c - w, STEPS - w - 1)
  return peak * (1 - k / (STEPS - w - 1)) ** 2


def default_excluded(name, w):
  return w.ndim <= 1


def _norm(x):
  return float(np.sqrt(np.sum(x * x)))


def ref_lars(w, grads, peak, m, beta, eta, eps, nesterov, excluded=default_excluded):
  w = {k: v.copy() for k, v in w.items()}
  v = {k: np.zeros_like(x) for k, x in w.items()}
  for t in range(STEPS):
    g, lr = grads(w, t), ref_lr(t, peak)
    for k in w:
      if excluded(k, w[k]):
        d = lr * g[k]
      else:
        wn, gn = _norm(w[k]), _norm(g[k])
        lam = eta * wn / (gn + beta * wn + eps) if wn > 0 and gn > 0 else 1.0
        d = lr * lam * (g[k] + beta * w[k])
      v[k] = m * v[k] + d
      w[k] = w[k] - (m * v[k] + d if nesterov else v[k])
  return w


def _adam_direction(mu, nu, g, t, b1, b2, eps):
  """Updates moments in place; returns the bias-corrected direction (t >= 1)."""
  mu[:] = b1 * mu + (1 - b1) * g
  nu[:] = b2 * nu + (1 - b2) * g * g
  return (mu / (1 - b1 ** t)) / (np.sqrt(nu / (1 - b2 ** t)) + eps)


def ref_adam_family(w, grads, peak, b1, b2, eps, beta, kind):
  """kind: 'adam' (coupled L2), 'adamw' (decoupled), 'lamb' (decoupled + trust)."""
  w = {k: v.copy() for k, v in w.items()}
  mu = {k: np.zeros_like(x) for k, x in w.items()}
  nu = {k: np.zeros_like(x) for k, x in w.items()}
  for t in range(STEPS):
    g, lr = grads(w, t), ref_lr(t, peak)
    for k in w:
      ex = w[k].ndim <= 1
      gk = g[k] + beta * w[k] if kind == "adam" and not ex else g[k]
      u = _adam_direction(mu[k], nu[k], gk, t + 1, b1, b2, eps)
      if kind != "adam" and not ex:
        u = u + beta * w[k]
      ratio = 1.0
      if kind == "lamb" and not ex:
        wn, un = _norm(w[k]), _norm(u)
        ratio = wn / un if wn > 0 and un > 0 else 1.0
      w[k] = w[k] - lr * ratio * u
  return w


def ref_momentum(w, grads, peak, m, beta, nesterov):
  w = {k: v.copy() for k, v in w.items()}
  v = {k: np.zeros_like(x) for k, x in w.items()}
  for t in range(STEPS):
    g, lr = grads(w, t), ref_lr(t, peak)
    for k in w:
      d = g[k] if w[k].ndim <= 1 else g[k] + beta * w[k]
      v[k] = m * v[k] + d
      w[k] = w[k] - lr * (d + m * v[k] if nesterov else v[k])
  return w


def run_lbt(make_tx, w0, grads, peak):
  """25 updates of make_tx(schedule) in float64, gradients from NumPy."""
  with jax.enable_x64(True):
    schedule = optim.create_schedule(ml_collections.ConfigDict(SCHEDULE), peak,
                                     STEPS_PER_EPOCH, STEPS)
    tx = make_tx(schedule)
    params = jax.tree.map(jnp.asarray, _nest(w0))
    state = tx.init(params)

    @jax.jit
    def step(g, state, params):
      updates, state = tx.update(g, state, params)
      return optax.apply_updates(params, updates), state

    for t in range(STEPS):
      g = jax.tree.map(jnp.asarray, _nest(grads(_flat(params), t)))
      params, state = step(g, state, params)
      assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(params))
    return _flat(params)


LARS_KW = dict(momentum=0.9, weight_decay=0.01, trust_coefficient=0.02, eps=1e-3)
ADAM_KW = dict(b1=0.9, b2=0.99, weight_decay=0.05)
LARS_REF = (0.9, 0.01, 0.02, 1e-3)  # m, beta, eta, eps
ADAM_REF = (0.9, 0.99)  # b1, b2; beta 0.05

CASES = {  # name: (lbt from schedule, peak LR, NumPy reference (w0, grads, peak))
    "lars": (lambda s: optim.lars(s, **LARS_KW), 1.0,
             lambda *a: ref_lars(*a, *LARS_REF, False)),
    "lars_nesterov": (lambda s: optim.lars(s, nesterov=True, **LARS_KW), 1.0,
                      lambda *a: ref_lars(*a, *LARS_REF, True)),
    "lars_exclude": (  # Dense_1/kernel plain momentum; BatchNorm_0/scale adapted
        lambda s: optim.lars(s, exclude=(r"^Dense_1/", "bias"), **LARS_KW), 1.0,
        lambda *a: ref_lars(*a, *LARS_REF, False,
                            lambda k, x: k.startswith("Dense_1") or "bias" in k)),
    "lamb": (lambda s: optim.lamb(s, eps=1e-6, **ADAM_KW), 0.05,
             lambda *a: ref_adam_family(*a, *ADAM_REF, 1e-6, 0.05, "lamb")),
    "adam": (lambda s: optim.adam(s, eps=1e-8, **ADAM_KW), 0.05,
             lambda *a: ref_adam_family(*a, *ADAM_REF, 1e-8, 0.05, "adam")),
    "adamw": (lambda s: optim.adamw(s, eps=1e-8, **ADAM_KW), 0.05,
              lambda *a: ref_adam_family(*a, *ADAM_REF, 1e-8, 0.05, "adamw")),
    "momentum": (lambda s: optim.momentum(s, momentum=0.9, weight_decay=0.01), 0.1,
                 lambda *a: ref_momentum(*a, 0.9, 0.01, False)),
    "nesterov": (lambda s: optim.nesterov(s, momentum=0.9, weight_decay=0.01), 0.1,
                 lambda *a: ref_momentum(*a, 0.9, 0.01, True)),
}


def _compare(make_tx, case):
  _, peak, reference = CASES[case]
  w0, grads = _problem()
  want = reference(w0, grads, peak)
  got = run_lbt(make_tx, w0, grads, peak)
  errors = {k: np.max(np.abs(got[k] - want[k]))
               / max(np.max(np.abs(want[k] - w0[k])), 1e-30) for k in want}
  return max(errors.values()), want, w0


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_numpy_reference(case):
  error, want, w0 = _compare(CASES[case][0], case)
  assert error <= 1e-6
  assert all(np.max(np.abs(want[k] - w0[k])) > 1e-3 for k in want)  # all move


def _lars_lr_outside(schedule):
  """Wrong: momentum accumulates lambda*(g+beta*w), LR applied afterwards."""
  from lbt.optim.lars import scale_by_lars_trust_ratio  # pylint: disable=g-import-not-at-top
  return optax.chain(scale_by_lars_trust_ratio(0.01, 0.02, 1e-3),
                     optax.trace(0.9), optax.scale_by_learning_rate(schedule))


KERNELS = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
WRONG = {  # each must FAIL the comparison against the published algorithm
    "lars_lr_outside_momentum": (_lars_lr_outside, "lars"),
    "optax_lars": (lambda s: optax.lars(s, 0.01, KERNELS, 0.02, 1e-3, KERNELS), "lars"),
    "lamb_no_bias_correction": (CASES["lamb"][0], "lamb"),  # with monkeypatch
    "optax_lamb": (lambda s: optax.lamb(s, 0.9, 0.99, 1e-6, weight_decay=0.05,
                                        mask=KERNELS), "lamb"),
}


@pytest.mark.parametrize("wrong", sorted(WRONG))
def test_reference_comparison_catches_wrong_variants(wrong, monkeypatch):
  if wrong == "lamb_no_bias_correction":  # scale_by_adam looks this up per call
    monkeypatch.setattr(optax.tree, "bias_correction", lambda m, decay, count: m)
  assert _compare(*WRONG[wrong])[0] > 1e-3


def _schedule(peak, spe, steps, **fields):
  return optim.create_schedule(ml_collections.ConfigDict(fields), peak, spe, steps)


def _values(schedule, counts):
  return [float(schedule(jnp.int32(c))) for c in counts]


def test_poly_and_cosine_schedules_hand_computed():
  # spe 10, warmup 0.4 epochs -> W = 4; N = 25 -> D = 21, k runs 0..20.
  # warmup c=0,1,3: 2*(c+1)/4 = 0.5, 1.0, 2.0.
  # poly: 0.01 + 1.99*(1 - k/20)^2; k=0 (c=4): 2.0; k=10 (c=14): 0.01 + 1.99/4
  # = 0.5075; k=15 (c=19): 0.01 + 1.99/16 = 0.134375; k=20 (c=24): 0.01.
  poly = _schedule(2.0, 10, 25, name="poly", warmup_epochs=0.4,
                   end_learning_rate=0.01, power=2)
  np.testing.assert_allclose(_values(poly, [0, 1, 3, 4, 14, 19, 24, 40]),
                             [0.5, 1.0, 2.0, 2.0, 0.5075, 0.134375, 0.01, 0.01],
                             rtol=1e-6)
  # cosine: 0.01 + 1.99*(1 + cos(pi*k/20))/2; k=10: 0.01 + 0.995 = 1.005;
  # k=5: 0.01 + 0.995*(1 + sqrt(2)/2) = 0.01 + 0.995*1.7071067811865475
  # = 0.01 + 1.6985712472806148 = 1.7085712472806148; k=20: 0.01.
  cosine = _schedule(2.0, 10, 25, name="cosine", warmup_epochs=0.4,
                     end_learning_rate=0.01)
  np.testing.assert_allclose(_values(cosine, [0, 3, 4, 9, 14, 24]),
                             [0.5, 2.0, 2.0, 1.7085712472806148, 1.005, 0.01],
                             rtol=1e-6)


def test_multistep_constant_and_full_batch_schedules():
  # spe 3, warmup 1 epoch -> W = 3; decays at epochs 2 (update 6) and 3.5
  # (update ceil(10.5) = 11): c=0: 1/3; c=2: 1; c=5: 1; c=6,10: 0.1; c=11,19: 0.01.
  multi = _schedule(1.0, 3, 20, name="multistep", warmup_epochs=1.0,
                    decay_epochs=[2, 3.5], decay_factor=0.1)
  np.testing.assert_allclose(_values(multi, [0, 2, 5, 6, 10, 11, 19]),
                             [1 / 3, 1, 1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)
  # 0.1 epoch * 30 = 3.0000000000000004 in floating point: still update 3.
  tenth = _schedule(1.0, 30, 100, name="multistep", decay_epochs=[0.1])
  assert _values(tenth, [2, 3]) == pytest.approx([1.0, 0.1])
  assert _values(_schedule(0.3, 5, 10, name="constant"), [0, 9]) == pytest.approx([0.3, 0.3])
  # Full batch: 1 update per epoch, warmup 2 epochs -> W = 2, N = 10, D - 1 = 7;
  # power 1: c=0: 0.5; c=1,2: 1; c=5 (k=3): 4/7; c=9 (k=7): 0.
  full = _schedule(1.0, 1, 10, name="poly", warmup_epochs=2, power=1)
  np.testing.assert_allclose(_values(full, [0, 1, 2, 5, 9]), [0.5, 1, 1, 4 / 7, 0],
                             atol=1e-7)
  # D = 1: the single post-warmup update uses the peak.
  assert _values(_schedule(1.0, 1, 3, name="cosine", warmup_epochs=2), [2]) == [1.0]


@pytest.mark.parametrize("fields, field", [
    (dict(name="poly", warmup_epochs=-1), "schedule.warmup_epochs"),
    (dict(name="poly", warmup_epochs=float("nan")), "schedule.warmup_epochs"),
    (dict(name="cosine", power=2), "schedule.power"),
    (dict(name="multistep", decay_epochs=[3], end_learning_rate=0.0),
     "schedule.end_learning_rate"),
    (dict(name="multistep", warmup_epochs=5, decay_epochs=[3]), "schedule.decay_epochs"),
    (dict(name="multistep", decay_epochs=[3, 2]), "schedule.decay_epochs"),
    (dict(name="step"), "schedule.name"),
])
def test_schedule_config_errors_name_the_field(fields, field):
  with pytest.raises(ConfigError) as e:
    _schedule(1.0, 1, 10, **fields)
  assert e.value.field == field


def test_a_run_shorter_than_its_warmup_warms_up_for_a_tenth_of_it():
  # spe 234, warmup 1 epoch = 234 updates > N = 30: W = min(ceil(30/10), 29) = 3.
  # warmup c=0,1,2: 1.2*(c+1)/3 = 0.4, 0.8, 1.2; cosine to 0 over D - 1 = 26:
  # c=16 (k=13): 1.2*(1 + cos(pi/2))/2 = 0.6; c=29 (k=26): 0.
  fields = dict(name="cosine", warmup_epochs=1.0, end_learning_rate=0.0)
  short = _schedule(1.2, 234, 30, **fields)
  np.testing.assert_allclose(_values(short, [0, 1, 2, 3, 16, 29]),
                             [0.4, 0.8, 1.2, 1.2, 0.6, 0.0], atol=1e-7)
  note = optim.warmup_note(ml_collections.ConfigDict(fields), 234, 30)
  assert "234 updates" in note and "3 updates" in note and "10 %" in note
  assert optim.warmup_note(ml_collections.ConfigDict(fields), 234, 235) is None
  # W = N = 10 (warmup 9.6 epochs rounds to 10): ceil(10/10) = 1 warmup update
  # at the peak, then poly (power 1) from 1 to 0 over D - 1 = 8: c=5 (k=4): 0.5.
  ten = _schedule(1.0, 1, 10, name="poly", warmup_epochs=9.6, power=1)
  np.testing.assert_allclose(_values(ten, [0, 1, 5, 9]), [1, 1, 0.5, 0], atol=1e-7)
  # N = 1: no warmup (at least one update decays); N = 2: one warmup update.
  assert _values(_schedule(0.5, 1, 1, name="poly", warmup_epochs=3), [0]) == [0.5]
  two = _schedule(0.5, 1, 2, name="poly", warmup_epochs=3, power=1)
  np.testing.assert_allclose(_values(two, [0, 1]), [0.5, 0.5])
  # Multistep decay epochs are checked against the shortened warmup (W = 2 of 20).
  multi = _schedule(1.0, 30, 20, name="multistep", warmup_epochs=1.0,
                    decay_epochs=[0.5], decay_factor=0.1)
  np.testing.assert_allclose(_values(multi, [0, 1, 14, 15, 19]), [0.5, 1, 1, 0.1, 0.1],
                             rtol=1e-6)


def test_scaling_rules():
  config = ml_collections.ConfigDict(dict(name="lars", learning_rate=0.1,
                                          base_batch_size=256, scaling="linear"))
  assert optim.effective_learning_rate(config, 8192) == pytest.approx(3.2)  # 0.1*32
  config.scaling = "sqrt"  # 0.1 * sqrt(8192/256) = 0.1 * sqrt(32)
  assert optim.effective_learning_rate(config, 8192) == pytest.approx(0.5656854249492381)
  config.scaling = "none"
  assert optim.effective_learning_rate(config, 8192) == 0.1
  config.scaling = "cubic"
  with pytest.raises(ConfigError, match="linear, sqrt, none") as e:
    optim.effective_learning_rate(config, 8192)
  assert e.value.field == "optimizer.scaling"


def test_exclude_masks():
  params = _nest({k: np.zeros(s) for k, s in SHAPES.items()})
  flat = lambda mask: {f"{l}/{p}": v for l, d in mask.items() for p, v in d.items()}
  assert flat(optim.decay_and_trust_mask()(params)) == {k: len(s) > 1 for k, s in SHAPES.items()}
  custom = flat(optim.decay_and_trust_mask(["BatchNorm", r"^Conv_0/bias$"])(params))
  assert [k for k, v in custom.items() if not v] == [
      "BatchNorm_0/bias", "BatchNorm_0/scale", "Conv_0/bias"]
  assert flat(optim.decay_and_trust_mask("kernel")(params))["Dense_0/bias"]  # one pattern
  with pytest.raises(ConfigError) as e:
    optim.lars(0.1, exclude=["("])
  assert e.value.field == "optimizer.exclude"


def _opt_config(**fields):
  base = dict(name="lars", learning_rate=0.1, scaling="linear", base_batch_size=256)
  return ml_collections.ConfigDict({**base, **fields})


def test_names_and_hyperparameters_are_checked():
  with pytest.raises(KeyError, match="allowed: adagrad, adam, adamw, clars, lamb, lans, lars"):
    optim.create_by_name("lion", 0.1)
  with pytest.raises(ConfigError) as e:
    optim.check(_opt_config(name="lion"))
  assert e.value.field == "optimizer.name"
  with pytest.raises(ConfigError, match="allowed for lars: momentum") as e:
    optim.create(_opt_config(b1=0.9), 0.1)
  assert e.value.field == "optimizer.b1"
  with pytest.raises(ConfigError) as e:
    optim.check(_opt_config(), ml_collections.ConfigDict(dict(name="cosine", power=1)))
  assert e.value.field == "schedule.power"


@pytest.mark.parametrize("fields,field,allowed", [
    (dict(b3=1.0), "optimizer.b3", "[0, 1)"),
    (dict(gamma_low=0.0), "optimizer.gamma_low", "> 0"),
    (dict(gamma_high=-1.0), "optimizer.gamma_high", "> 0"),
    (dict(gamma_low=0.5, gamma_high=0.2), "optimizer.gamma_high", ">= gamma_low (0.5)"),
])
def test_gsnr_band_is_checked(fields, field, allowed):
  with pytest.raises(ConfigError) as e:
    optim.check(_opt_config(name="vr_lamb", **fields))
  assert e.value.field == field and allowed in e.value.allowed, e.value


def test_create_from_config_equals_factory():
  config = _opt_config(momentum=0.9, weight_decay=1e-4, trust_coefficient=0.001,
                       exclude=["bias", "scale"], nesterov=True)
  optim.check(config, ml_collections.ConfigDict(SCHEDULE))
  params = jax.tree.map(jnp.asarray, _nest(_problem()[0]))
  grads = jax.tree.map(jnp.ones_like, params)
  a = optim.create(config, 0.5)
  b = optim.lars(0.5, momentum=0.9, weight_decay=1e-4, nesterov=True,
                 exclude=("bias", "scale"))
  ua, _ = a.update(grads, a.init(params), params)
  ub, _ = b.update(grads, b.init(params), params)
  jax.tree.map(np.testing.assert_array_equal, ua, ub)


def test_trust_ratio_stats_hand_checked():
  params = {"a": {"kernel": jnp.array([[3.0, 4.0]])},  # ||w|| = 5
            "b": {"kernel": jnp.zeros((1, 2))},  # ||w|| = 0 -> ratio 1
            "a_bias": jnp.array([1.0])}  # excluded, not in the stats
  grads = {"a": {"kernel": jnp.array([[0.0, 1.0]])}, "b": {"kernel": jnp.ones((1, 2))},
           "a_bias": jnp.array([1.0])}
  # LARS: 0.1*5 / (1 + 0.1*5) = 1/3; stats over {1/3, 1}.
  tx = optim.lars(1.0, trust_coefficient=0.1, weight_decay=0.1)
  stats = jax.jit(lambda s: optim.trust_ratio_stats(tx.update(grads, s, params)[1]))(
      tx.init(params))
  assert {k: float(v) for k, v in stats.items()} == pytest.approx(
      {"trust_ratio_min": 1 / 3, "trust_ratio_mean": 2 / 3, "trust_ratio_max": 1.0})
  # LAMB, first update, no decay, b1 = b2 = 0.5 (1 - 0.5 is exact in float32):
  # u = g/(|g| + 1e-6) = [0, 1/(1+1e-6)], so the ratio is 5*(1+1e-6) = 5.000005;
  # zero kernel -> 1.
  tx = optim.lamb(1.0, b1=0.5, b2=0.5)
  stats = optim.trust_ratio_stats(tx.update(grads, tx.init(params), params)[1])
  assert {k: float(v) for k, v in stats.items()} == pytest.approx(
      {"trust_ratio_min": 1.0, "trust_ratio_mean": 3.0000025,
       "trust_ratio_max": 5.000005}, rel=1e-6)
  tx = optim.momentum(1.0)
  assert optim.trust_ratio_stats(tx.update(grads, tx.init(params), params)[1]) == {}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", optim.OPTIMIZERS.names())
def test_dtype_and_no_recompilation(name, dtype):
  params = jax.tree.map(lambda s: jnp.full(s, 0.5, dtype), _nest(SHAPES),
                        is_leaf=lambda x: isinstance(x, tuple))
  tx = optim.create_by_name(name, optax.linear_schedule(0.1, 0.0, 10),
                            weight_decay=1e-4)
  # What the train step passes when optim.needs asks (float32, as it sums):
  # mean_k g_k^2 = 2 G^2 gives every coordinate the same GSNR.
  needs = optim.needs(dict(name=name))
  extra = {}
  if "microbatch_grad_sq" in needs:
    extra.update(num_microbatches=2, microbatch_grad_sq=jax.tree.map(
        lambda p: jnp.full(p.shape, 0.02, jnp.float32), params))
  if "per_example_grad_norm" in needs:
    extra.update(per_example_grad_norm=jax.tree.map(
        lambda p: jnp.float32(0.2), params))
  state = tx.init(params)
  state_types = jax.tree.map(lambda x: (x.shape, x.dtype), state)
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(1)
    grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.1, params)
    updates, state = tx.update(grads, state, params, **extra)
    assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
    return optax.apply_updates(params, updates), state, optim.trust_ratio_stats(state)

  for _ in range(3):
    params, state, _ = step(params, state)
  assert len(traces) == 1
  assert all(p.dtype == dtype for p in jax.tree.leaves(params))
  assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == state_types
