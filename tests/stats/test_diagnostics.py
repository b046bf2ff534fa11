"""lbt.stats.diffusion and lbt.stats.noise_scale against curves and gradients with known coefficients."""

import numpy as np
import pytest

from lbt.stats import diffusion
from lbt.stats import noise_scale

T = np.arange(1, 2001, dtype=np.float64)


def test_log_fit_recovers_known_coefficients():
  fit = diffusion.fit_log(T, 0.37 * np.log(T) + 1.25)
  assert fit.a == pytest.approx(0.37, abs=1e-6)
  assert fit.b == pytest.approx(1.25, abs=1e-6)
  assert fit.r2 == pytest.approx(1.0, abs=1e-9)


def test_power_fit_recovers_known_coefficients():
  fit = diffusion.fit_power(T, 0.8 * T ** 0.31)
  assert fit.c == pytest.approx(0.8, abs=1e-6)
  assert fit.p == pytest.approx(0.31, abs=1e-6)
  assert fit.r2 == pytest.approx(1.0, abs=1e-9)


def test_r_squared_hand_computed():
  # y = (1, 2, 3), y_hat = (1, 2, 4): SS_res = 1, SS_tot = 2.
  assert diffusion.r_squared([1, 2, 3], [1, 2, 4]) == pytest.approx(0.5)


def test_logarithmic_growth_is_told_apart_from_a_power_law():
  rng = np.random.default_rng(0)
  noise = rng.normal(0, 0.01, T.size)
  log_curve = 0.5 * np.log(T) + 2.0 + noise
  power_curve = 0.2 * T ** 0.5 + noise
  log_verdict = diffusion.is_logarithmic(diffusion.fit_log(T, log_curve),
                                           diffusion.fit_power(T, log_curve))
  power_verdict = diffusion.is_logarithmic(diffusion.fit_log(T, power_curve),
                                             diffusion.fit_power(T, power_curve))
  assert log_verdict and not power_verdict


def _verdict(curve, **numbers):
  fits = [(b, diffusion.fit_log(T, curve), diffusion.fit_power(T, curve))
          for b in (128, 2048)]
  return diffusion.diffusion_verdict(fits, small_batch=128, large_batch=2048, **numbers)


def test_verdict_supports_hoffer_when_adaptation_closes_the_gap():
  verdict = _verdict(0.5 * np.log(T) + 2.0, small_accuracy=0.90, small_distance=10.0,
                     large_accuracy=0.85, adapted_accuracy=0.899, adapted_distance=9.5)
  assert verdict.logarithmic and verdict.gap_closed and verdict.distance_matched
  assert verdict.supports_hoffer
  assert "consistent with Hoffer" in verdict.text and "98% of the gap closed" in verdict.text


def test_verdict_contradicts_hoffer_when_the_gap_stays():
  verdict = _verdict(0.5 * np.log(T) + 2.0, small_accuracy=0.90, small_distance=10.0,
                     large_accuracy=0.80, adapted_accuracy=0.84, adapted_distance=10.5)
  assert verdict.logarithmic and verdict.distance_matched and not verdict.gap_closed
  assert not verdict.supports_hoffer
  assert "contradicts Hoffer" in verdict.text and "40% of the gap closed" in verdict.text


def test_verdict_rejects_logarithmic_growth_of_a_power_law():
  verdict = _verdict(0.2 * T ** 0.5, small_accuracy=0.90, small_distance=10.0,
                     large_accuracy=0.85, adapted_accuracy=0.90, adapted_distance=20.0)
  assert not verdict.logarithmic and verdict.gap_closed and not verdict.distance_matched
  assert not verdict.supports_hoffer


def test_gradient_noise_scale_hand_computed():
  # |G_b|² = 5 at b = 2, |G_B|² = 3 at B = 6: |G|² = (18 - 10)/4 = 2, tr Σ = 2/(1/2 - 1/6) = 6.
  assert noise_scale.gradient_noise_scale(5.0, 3.0, 2, 6) == pytest.approx((2.0, 6.0))
  g2, tr = noise_scale.gradient_noise_scale(np.array([5.0, 5.0]), np.array([3.0, 3.0]), 2, 6)
  np.testing.assert_allclose(g2, [2.0, 2.0])
  np.testing.assert_allclose(tr, [6.0, 6.0])


def test_gradient_noise_scale_is_unbiased_on_synthetic_gradients():
  """Per-example gradients ~ N(G, Σ) in float64; averaged over many draws the
  estimates match |G|² and tr(Σ) within 5 standard errors of the mean."""
  rng = np.random.default_rng(1)
  dim, small, big, draws = 6, 4, 16, 40000
  mean = rng.normal(0.0, 1.0, dim)
  factor = rng.normal(0.0, 1.0, (dim, dim))
  sigma = factor @ factor.T / dim
  per_example = rng.multivariate_normal(mean, sigma, size=(draws, big))
  g_small = per_example[:, :small].mean(axis=1)
  g_big = per_example.mean(axis=1)
  g2, tr = noise_scale.gradient_noise_scale(
      np.sum(g_small ** 2, -1), np.sum(g_big ** 2, -1), small, big)
  for estimate, truth in ((g2, mean @ mean), (tr, np.trace(sigma))):
    stderr = estimate.std() / np.sqrt(draws)
    assert abs(estimate.mean() - truth) < 5 * stderr, (estimate.mean(), truth, stderr)


@pytest.mark.parametrize("call", [
    lambda: noise_scale.gradient_noise_scale(1.0, 1.0, 8, 8),
    lambda: diffusion.fit_log([0, 1], [1, 2]),
    lambda: diffusion.fit_power([1, 2], [0, 1]),
])
def test_degenerate_inputs_are_refused(call):
  with pytest.raises(ValueError):
    call()
