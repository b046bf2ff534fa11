"""Full-batch training that generalizes (Geiping et al. 2022): gradient
clipping and the gradient-norm penalty against float64 NumPy references
derived by hand, the study file, its summary and its report section.

The references: for softmax regression, logits z = x W + c, the block
gradient of the mean cross-entropy is g_b = (X_bᵀ(P_b − Y_b), Σ(P_b − Y_b)) / n_b,
and its Hessian applied to a direction (V, v) is
(Σ_i x_iᵀ s_i, Σ_i s_i) / n_b with s_i = (diag p_i − p_i p_iᵀ)(x_i V + v):
so ∇θ ½‖g_b‖² = H_b g_b needs no autodiff.
"""

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

from configs import fashion_mnist
from configs.studies import fashion_mnist_full_batch as study_file
from lbt import models, optim
from lbt.engine import config as config_lib
from lbt.engine import parallel, programs, regularizers, step
from lbt.errors import ConfigError
from lbt.io import layout
from lbt.reports import full_batch as report
from lbt.studies import full_batch as summary_lib
from lbt.studies import points as points_lib
from study_dirs import write_choice

FEATURES, CLASSES = 12, 5


class Softmax(nn.Module):
  """Softmax regression: the model the references derive by hand."""

  @nn.compact
  def __call__(self, x, train, mask=None):
    del train, mask
    return nn.Dense(CLASSES)(x.reshape(x.shape[0], -1))


def batch_of(n, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.normal(size=(n, FEATURES)).astype(np.float32),
          "label": rng.integers(0, CLASSES, n).astype(np.int32)}


def softmax64(z):
  z = z - z.max(axis=1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=1, keepdims=True)


def block_gradient(w, c, x, y):
  """(dW, dc) of the mean cross-entropy of one block, float64."""
  p = softmax64(x @ w + c)
  r = p - np.eye(CLASSES)[y]
  return x.T @ r / len(y), r.sum(0) / len(y)


def block_hvp(w, c, x, y, v_w, v_c):
  """The block's Hessian applied to (v_w, v_c), from the formula above."""
  p = softmax64(x @ w + c)
  dz = x @ v_w + v_c
  s = p * dz - p * (p * dz).sum(axis=1, keepdims=True)
  return x.T @ s / len(y), s.sum(0) / len(y)


def reference_penalty(w, c, x, y, block):
  """Σ_b n_b H_b g_b over interleaved blocks (block j: examples j, j + k, ...)."""
  k = len(y) // block
  total_w, total_c = np.zeros_like(w), np.zeros_like(c)
  for j in range(k):
    xb, yb = x[j::k], y[j::k]
    hw, hc = block_hvp(w, c, xb, yb, *block_gradient(w, c, xb, yb))
    total_w += len(yb) * hw
    total_c += len(yb) * hc
  return total_w, total_c


def init_softmax(seed=0):
  params = Softmax().init(jax.random.PRNGKey(seed), jnp.zeros((1, FEATURES)),
                          train=False)["params"]
  return jax.tree.map(lambda a: a + 0.3, params)  # away from the symmetric start


def as64(params):
  return (np.asarray(params["Dense_0"]["kernel"], np.float64),
          np.asarray(params["Dense_0"]["bias"], np.float64))


def test_penalty_gradient_matches_the_hand_derived_reference():
  params, batch = init_softmax(), batch_of(48)
  got = regularizers.penalty_gradient(
      Softmax().apply, params, {}, batch, jax.random.PRNGKey(0), step.cross_entropy, 0.0, 8)
  want_w, want_c = reference_penalty(*as64(params), batch["image"].astype(np.float64),
                                     batch["label"], 8)
  np.testing.assert_allclose(got["Dense_0"]["kernel"], want_w, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got["Dense_0"]["bias"], want_c, rtol=1e-4, atol=1e-6)


def test_a_padded_block_weighs_by_its_real_examples():
  """Masked places get no loss; a block's weight is its count of real examples."""
  params, batch = init_softmax(), batch_of(16, seed=2)
  mask = np.ones(16, np.float32)
  mask[[3, 7, 11, 15]] = 0  # in an interleaved cut of 4 blocks: all of block 3
  mask[[2]] = 0
  got = regularizers.penalty_gradient(Softmax().apply, params, {}, {**batch, "mask": mask},
                                      jax.random.PRNGKey(0), step.cross_entropy, 0.0, 4)
  w, c = as64(params)
  x, y = batch["image"].astype(np.float64), batch["label"]
  want_w, want_c = np.zeros_like(w), np.zeros_like(c)
  for j in range(4):
    real = [i for i in range(j, 16, 4) if mask[i]]
    if real:
      hw, hc = block_hvp(w, c, x[real], y[real], *block_gradient(w, c, x[real], y[real]))
      want_w, want_c = want_w + len(real) * hw, want_c + len(real) * hc
  np.testing.assert_allclose(got["Dense_0"]["kernel"], want_w, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got["Dense_0"]["bias"], want_c, rtol=1e-4, atol=1e-6)


def test_penalty_equals_double_backprop_through_vmapped_block_gradients():
  """With BatchNorm over each block (ghost batches of the block): the scan of
  Hessian-vector products equals jax.grad of ½ Σ_b n_b ‖vmap(grad)‖²."""
  model = models.create("mlp", num_classes=10, ghost_size=8, hidden_sizes=(16,))
  params, stats, _ = step.init_variables(jax.random.PRNGKey(1), model, (4, 4, 1))
  rng = np.random.default_rng(5)
  batch = {"image": rng.normal(size=(32, 4, 4, 1)).astype(np.float32),
           "label": rng.integers(0, 10, 32).astype(np.int32)}
  got = regularizers.penalty_gradient(model.apply, params, stats, batch,
                                      jax.random.PRNGKey(0), step.cross_entropy, 0.0, 8)

  def block_loss(p, x, y):
    logits, _ = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                            mutable=["batch_stats"])
    return jnp.mean(step.cross_entropy(logits, y, 0.0))

  def half_penalty(p):
    xs, ys = (regularizers.blocks(jnp.asarray(a), 8) for a in (batch["image"], batch["label"]))
    grads = jax.vmap(jax.grad(block_loss), in_axes=(None, 0, 0))(p, xs, ys)
    return 0.5 * 8 * sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads))

  want = jax.grad(half_penalty)(params)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4 * float(jnp.max(jnp.abs(b))))


def run_update(model, tx, batch, *, num_microbatches=1, learning_rate=0.5, penalty=None):
  """One real jitted update (lbt.engine.programs) on one device."""
  mesh = Mesh(np.asarray(jax.devices()[:1]), (parallel.DATA_AXIS,))
  init = jax.jit(functools.partial(step.create_train_state, model=model, tx=tx,
                                   input_shape=batch["image"].shape[1:]))
  state = init(jax.random.PRNGKey(0))
  state = state.replace(params=jax.tree.map(lambda a: a + 0.3, state.params))
  params0 = jax.tree.map(jnp.copy, state.params)
  update = programs.compile_update(model, tx, lambda c: learning_rate, mesh,
                                   num_microbatches, label_smoothing=0.0,
                                   gradient_penalty=penalty)
  micro = [jax.tree.map(lambda x: x[k::num_microbatches], batch)
           for k in range(num_microbatches)]
  state, metrics = update(state, iter(micro), jax.tree.map(jnp.copy, params0), 0.0)
  return jax.device_get(params0), jax.device_get(state), jax.device_get(metrics)


@pytest.mark.parametrize("num_microbatches", [1, 3])
@pytest.mark.parametrize("scaled", [False, True])
def test_recipe_update_penalty_then_clip_then_sgd(num_microbatches, scaled):
  """w' = w − η · clip(g + λ mean_b H_b g_b): the penalty enters the gradient
  before the whole gradient is clipped, as in Geiping et al.'s code."""
  strength, eta, clip, block, n = 0.3, 0.5, 0.05, 4, 48
  penalty = regularizers.check(ml_collections.ConfigDict(dict(
      strength=strength, block=block, scale_by_learning_rate=scaled)))
  tx = optim.create_with_learning_rate_input(dict(name="sgd", clip_norm=clip))
  batch = batch_of(n, seed=9)
  params0, state, metrics = run_update(Softmax(), tx, batch, penalty=penalty,
                                       num_microbatches=num_microbatches, learning_rate=eta)
  w, c = as64(params0)
  x, y = batch["image"].astype(np.float64), batch["label"]
  g_w, g_c = block_gradient(w, c, x, y)
  # Blocks of a batch are the same sets however it is cut into microbatches.
  p_w, p_c = reference_penalty(w, c, x, y, block)
  lam = strength * eta if scaled else strength
  d_w, d_c = g_w + lam * p_w / n, g_c + lam * p_c / n
  norm = np.sqrt(np.sum(d_w ** 2) + np.sum(d_c ** 2))
  np.testing.assert_allclose(metrics["penalized_grad_norm"], norm, rtol=1e-4)
  np.testing.assert_allclose(metrics["grad_norm"], np.sqrt(np.sum(g_w ** 2) + np.sum(g_c ** 2)),
                             rtol=1e-4)
  assert norm > clip  # the clip is active
  scale = min(1.0, clip / norm)
  np.testing.assert_allclose(state.params["Dense_0"]["kernel"], w - eta * scale * d_w,
                             atol=1e-6)
  np.testing.assert_allclose(state.params["Dense_0"]["bias"], c - eta * scale * d_c,
                             atol=1e-6)


def test_penalty_blocks_do_not_depend_on_the_microbatches_with_ghost_batchnorm():
  model = models.create("mlp", num_classes=10, ghost_size=8, hidden_sizes=(16,))
  rng = np.random.default_rng(4)
  batch = {"image": rng.normal(size=(64, 4, 4, 1)).astype(np.float32),
           "label": rng.integers(0, 10, 64).astype(np.int32)}
  penalty = dict(strength=0.2, block=8, scale_by_learning_rate=False)
  tx = optim.create_with_learning_rate_input(dict(name="sgd"))
  _, one, _ = run_update(model, tx, batch, penalty=penalty, learning_rate=1.0)
  _, four, _ = run_update(model, tx, batch, penalty=penalty, learning_rate=1.0,
                          num_microbatches=4)
  _, none, _ = run_update(model, tx, batch, learning_rate=1.0)
  for a, b, c in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params),
                     jax.tree.leaves(none.params)):
    np.testing.assert_allclose(a, b, atol=1e-5)
  assert any(np.max(np.abs(a - c)) > 1e-4 for a, c in zip(jax.tree.leaves(one.params),
                                                            jax.tree.leaves(none.params)))


def reference_clipped_nesterov(w0, grads, lr, momentum, decay, clip):
  """Clip the whole gradient, add decay to tensors of ndim > 1, Nesterov, float64."""
  w = {k: v.astype(np.float64) for k, v in w0.items()}
  velocity = {k: np.zeros_like(v) for k, v in w.items()}
  for g in grads:
    norm = np.sqrt(sum(np.sum(v ** 2) for v in g.values()))
    factor = 1.0 if norm < clip else clip / norm
    for k in w:
      d = factor * g[k] + (decay * w[k] if w[k].ndim > 1 else 0.0)
      velocity[k] = momentum * velocity[k] + d
      w[k] = w[k] - lr * (d + momentum * velocity[k])
  return w


def test_clip_norm_matches_the_numpy_reference():
  rng = np.random.default_rng(0)
  w0 = {"kernel": rng.normal(size=(6, 4)), "bias": rng.normal(size=(4,))}
  # Norms about 4, 0.6 and 0.1 against a clip of 0.5: clipped, clipped, not.
  grads = [{k: s * rng.normal(size=v.shape) for k, v in w0.items()} for s in (0.8, 0.12, 0.02)]
  tx = optim.create(dict(name="nesterov", momentum=0.9, weight_decay=1e-2, clip_norm=0.5),
                    0.3)
  params = {k: jnp.asarray(v, jnp.float32) for k, v in w0.items()}
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update({k: jnp.asarray(v, jnp.float32) for k, v in g.items()},
                               state, params)
    params = optax.apply_updates(params, updates)
  want = reference_clipped_nesterov(w0, grads, 0.3, 0.9, 1e-2, 0.5)
  for k in want:
    np.testing.assert_allclose(params[k], want[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("clip", [0, 0.0, None])
def test_no_clip_is_the_optimizer_alone(clip):
  section = dict(name="lars", momentum=0.9, weight_decay=5e-4, trust_coefficient=0.001)
  plain = optim.create(section, 0.1)
  off = optim.create({**section, **({} if clip is None else {"clip_norm": clip})}, 0.1)
  params = {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}
  grads = {"kernel": jnp.full((3, 2), 5.0), "bias": jnp.full((2,), 5.0)}
  assert (jax.tree.structure(plain.init(params)) == jax.tree.structure(off.init(params)))
  a, _ = plain.update(grads, plain.init(params), params)
  b, _ = off.update(grads, off.init(params), params)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def base_config():
  return fashion_mnist.get_config("sgd,batch=256,model=mlp")


@pytest.mark.parametrize("fields,field,allowed", [
    (dict(strength=-1.0), "loss.gradient_penalty.strength", "a finite number >= 0"),
    (dict(strength=0.1, block=0), "loss.gradient_penalty.block", "an int >= 1"),
    (dict(strength=0.1, block=48), "loss.gradient_penalty.block",
     "a divisor of the microbatch (256 at batch 256)"),
    (dict(strength=0.1, blok=8), "loss.gradient_penalty.blok", "allowed: strength, block"),
    (dict(strength=0.1, block=8, scale_by_learning_rate="yes"),
     "loss.gradient_penalty.scale_by_learning_rate", "True or False"),
])
def test_bad_penalty_sections_name_the_field(fields, field, allowed):
  config = base_config()
  config.loss.gradient_penalty = fields
  with pytest.raises(ConfigError) as error:
    config_lib.validate(config, num_devices=1)
  assert error.value.field == field and allowed in error.value.allowed


def test_penalty_against_ghost_batches_and_conadv():
  config = base_config()
  config.bn.ghost_size = 16
  config.loss.gradient_penalty = dict(strength=0.1, block=8)
  with pytest.raises(ConfigError, match="a multiple of bn.ghost_size"):
    config_lib.validate(config, num_devices=1)
  config.bn.ghost_size = 0
  config.loss.adversarial.enabled = True
  with pytest.raises(ConfigError, match="loss.adversarial.enabled is True"):
    config_lib.validate(config, num_devices=1)


def test_off_by_default_and_strength_zero_is_off():
  config = base_config()
  assert config_lib.validate(config, num_devices=1).gradient_penalty is None
  config.loss.gradient_penalty = dict(strength=0.0, block=8)
  assert config_lib.validate(config, num_devices=1).gradient_penalty is None
  config.loss.gradient_penalty = dict(strength=0.2, block=8)
  assert config_lib.validate(config, num_devices=1).gradient_penalty == dict(
      strength=0.2, block=8, scale_by_learning_rate=False)


@pytest.mark.parametrize("value", [-0.1, float("inf"), "big", True])
def test_bad_clip_norm_names_the_field(value):
  config = base_config()
  config.optimizer.clip_norm = value
  with pytest.raises(ConfigError) as error:
    config_lib.validate(config, num_devices=1)
  assert error.value.field == "optimizer.clip_norm"


def test_bad_shuffle_names_the_field():
  config = base_config()
  config.dataset.shuffle = "no"
  with pytest.raises(ConfigError) as error:
    config_lib.validate(config, num_devices=1)
  assert error.value.field == "dataset.shuffle"


def test_the_study_file_validates_and_holds_the_recipe():
  found = points_lib.study_points(study_file.get_study())
  assert {p.role["section"] for p in found.values()} == {"full_batch"}
  assert all(p.search is not None and p.search.seeds == (1, 2) for p in found.values())
  facts = {n: config_lib.validate(p.config, num_devices=1) for n, p in found.items()}
  full = next(n for n, f in facts.items() if f.batch_size == f.train_examples)
  small = next(n for n in facts if n != full)
  assert facts[full].train_examples == 50000 and facts[small].batch_size == 128
  assert facts[full].gradient_penalty == dict(strength=0.125, block=125,
                                              scale_by_learning_rate=True)
  assert facts[full].num_train_steps == 10 * facts[small].num_epochs
  assert facts[small].gradient_penalty is None
  config = found[full].config
  assert config.optimizer.clip_norm == 0.25 and config.dataset.shuffle is False
  assert config.bn.ghost_size == 125 and "clip_norm" not in found[small].config.optimizer


def hand_made_summary():
  """Two arms of three seeds each: small 89.11, 89.41, 88.81 (mean 89.11,
  s = 0.30, 95% half-width 4.303 · 0.30/√3 = 0.75); full 86.52, 86.72, 86.32
  (mean 86.52, s = 0.20, half 0.50)."""
  def arm(batch, accuracies, updates, seeds, learning_rate, curve, recipe):
    def run(accuracy):
      return {"name": f"b{batch}", "status": "finished", "learning_rate": learning_rate,
              "validation_accuracy": accuracy + 0.004, "test_accuracy": accuracy,
              "updates": updates, "examples": updates * batch,
              "epochs": updates * batch / 50000, "wall_time_s": 10.0 * updates / 60,
              "curve": curve}
    chosen = run(accuracies[0])
    return {"cell": f"nesterov-b{batch}", "optimizer": "nesterov", "batch": batch,
            "validation_examples": 10000, "chosen": chosen, "bracketed": batch == 128,
            "bracket": "trial cap (5) reached with the best at the highest rate",
            "trials": [chosen, chosen, chosen], "seeds": [run(a) for a in accuracies[1:]],
            "seed_range_points": seeds, "search_examples": 5 * updates * batch,
            "search_wall_time_s": 100.0, "recipe": recipe, "train_examples": 50000}
  recipe = {"optimizer": "nesterov", "momentum": 0.9, "weight_decay": 5e-4, "clip_norm": 0.25,
            "gradient_penalty": {"strength": 0.125, "block": 125,
                                 "scale_by_learning_rate": True},
            "ghost_size": 125, "shuffle": False, "microbatch_size": 10000,
            "schedule": {"name": "cosine", "warmup_epochs": 8.0, "end_learning_rate": 0.0}}
  arms = {"small": arm(128, (0.8911, 0.8941, 0.8881), 2340, 0.31, 0.05,
                       [[234, 0.85], [2340, 0.8911]], {}),
          "full": arm(50000, (0.8652, 0.8672, 0.8632), 60, 0.22, 0.8,
                      [[6, 0.70], [30, 0.84], [48, 0.859], [54, 0.862], [60, 0.8652]],
                      recipe)}
  return {"arms": arms, **summary_lib.verdict(arms)}


def test_the_summary_verdict_of_a_hand_made_summary():
  summary = hand_made_summary()
  assert "closed" not in summary  # The report decides, by the seed intervals.
  assert summary["gap_points"] == pytest.approx(2.59)
  assert summary["updates_ratio"] == pytest.approx(60 / 2340)


def test_the_section_renders_from_a_hand_made_summary(tmp_path):
  """The arms' intervals (88.36-89.86 and 86.02-87.02) do not overlap: the
  gap does not close; moved to 88.90, 89.10, 88.70 they overlap: it closes."""
  summary = hand_made_summary()
  text = report.section(summary, "fashion_mnist_full_batch", str(tmp_path))
  assert "**The full batch does not close the gap** to batch 128" in text
  assert "-2.59 points (3 against 3 seeds): below" in text
  assert "| 89.11 ± 0.75 (3 seeds) |" in text and "| 86.52 ± 0.50 (3 seeds) |" in text
  assert "60 updates against 2340" in text
  assert "3,000,000 examples against 299,520" in text
  assert "**not bracketed: trial cap (5)" in text
  assert "clipped to L2 norm 0.25" in text and "blocks of 125, not 128" in text
  assert "their α = 0.5" in text and "no shuffling" in text
  assert "still rising" in text and "0.167 s per update and 3.33 µs per example" in text
  assert (tmp_path / "full_batch_0.png").exists()
  full = summary["arms"]["full"]
  for run, accuracy in zip([full["chosen"]] + full["seeds"], (0.8890, 0.8910, 0.8870)):
    run["test_accuracy"] = accuracy
  text = report.section(summary, "x", str(tmp_path))
  assert "**The full batch closes the gap**" in text and "a tie within seed noise" in text


def test_a_report_shows_only_the_summaries_it_is_told_to_include(tmp_path):
  """Its own DIR/full_batch.json, then each included study's; a study beside
  it, or a stray file, changes nothing unless named."""
  default, full = tmp_path / "fmnist", tmp_path / "fmnist_full_batch"
  for d in (default, full):
    d.mkdir()
  (default / "report").mkdir()
  (full / layout.FULL_BATCH).write_text(json.dumps(hand_made_summary()))
  (full / layout.STUDY).write_text("{}")
  (tmp_path / layout.FULL_BATCH).write_text("not json")
  assert report.summaries(str(default)) == []
  assert report.section_for(str(default), [], str(default / "report")) == ""
  assert [label for label, _ in report.summaries(str(default), [str(full)])] == [
      "fmnist_full_batch"]
  text = report.section_for(str(default), [str(full)], str(default / "report"))
  assert "(`fmnist_full_batch`)" in text and "does not close the gap" in text
  # Its own summary first, then the included one.
  (default / layout.FULL_BATCH).write_text(json.dumps(hand_made_summary()))
  assert [label for label, _ in report.summaries(str(default), [str(full)])] == [
      "fmnist", "fmnist_full_batch"]


def test_summary_takes_the_runners_choice_and_measures_the_seed_range(monkeypatch, tmp_path):
  """The arm's answer is the runner's choice as written (here 0.1, the
  validation-best, while 0.05 has the better test accuracy), its runs the
  chosen ones; an arm whose search has not ended has no answer yet."""
  def row(name, section, cell, batch, lr, validation, test, status="finished", seed=None):
    return {"name": name, "section": section, "cell": cell, "status": status,
            "optimizer": "nesterov", "batch_size": batch, "base_learning_rate": lr,
            "validation_accuracy": validation, "final_accuracy": test, "seed": seed,
            "validation_examples": 10000, "updates": 2340 if batch == 128 else 60,
            "epochs": 6.0, "wall_time_s": 5.0,
            "config_json": json.dumps({"optimizer": {"name": "nesterov"}, "loss": {},
                                       "bn": {}, "dataset": {}, "schedule": {"name": "cosine"},
                                       "microbatch_size": 0, "seed": seed or 0})}
  rows = [row("s-lr0.05", "full_batch", "s", 128, 0.05, 0.880, 0.899),
          row("s-lr0.1", "full_batch", "s", 128, 0.1, 0.895, 0.890),
          row("s-lr0.2", "full_batch", "s", 128, 0.2, 0.870, 0.880),
          row("s-seed1", "seed", "s/seed1", 128, 0.1, 0.894, 0.887, seed=1),
          row("f-lr0.4", "full_batch", "f", 50000, 0.4, 0.860, 0.850),
          row("f-lr0.8", "full_batch", "f", 50000, 0.8, 0.870, 0.862),
          row("f-lr1.6", "full_batch", "f", 50000, 1.6, None, None, status="running"),
          row("other", "sweep", "momentum-b128", 128, 0.1, None, 0.5)]
  write_choice(str(tmp_path), "s", learning_rate=0.1, bracketed=True, reason="bracketed",
               chosen_runs=["s-lr0.1", "s-seed1"])
  monkeypatch.setattr(summary_lib.results, "load_point", lambda w, name: name)
  monkeypatch.setattr(summary_lib.results, "facts_of", lambda name: {"train_examples": 50000})
  summary = summary_lib.summarize(str(tmp_path), rows)
  small, full = summary["arms"]["small"], summary["arms"]["full"]
  assert small["chosen"]["learning_rate"] == 0.1 and small["bracketed"]
  assert [r["name"] for r in small["seeds"]] == ["s-seed1"] and small["seeds"][0]["seed"] == 1
  assert small["seed_range_points"] == pytest.approx(0.3)
  assert full["chosen"] is None and not full["bracketed"] and len(full["trials"]) == 3
  assert full["bracket"] == "the search has not ended"
  assert summary["gap_points"] is None
  assert summary_lib.summarize(str(tmp_path), rows[-1:]) is None
  path = summary_lib.write(str(tmp_path), summary)
  assert summary_lib.read(path) == json.loads(json.dumps(summary))


def test_a_summary_that_cannot_be_shown_is_one_line_not_a_crash(tmp_path):
  """An included study's full_batch.json of another version (a field
  missing) leaves the report standing, naming it."""
  default, full = tmp_path / "fmnist", tmp_path / "fmnist_full_batch"
  for d in (default, full):
    d.mkdir()
  (default / "report").mkdir()
  broken = hand_made_summary()
  broken["arms"]["full"].pop("recipe", None)
  for arm in broken.get("arms", {}).values():
    arm["recipe"] = {"optimizer": None}
  (full / layout.FULL_BATCH).write_text(json.dumps(broken))
  (full / layout.STUDY).write_text("{}")
  text = report.section_for(str(default), [str(full)], str(default / "report"))
  assert "could not be shown" in text and "fmnist_full_batch" in text
