"""MMD and the other losses against their definitions and a NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np

from diffmic_jax import losses


def _numpy_mmd(x, y, scales):
  x, y = np.float64(x), np.float64(y)

  def k(a, b):
    d = ((a[:, None, :] - b[None, :, :])**2).sum(-1)
    return sum(np.exp(-d / s) for s in scales).mean()
  return k(x, x) + k(y, y) - 2 * k(x, y)


def test_mmd_properties_and_reference():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(32, 5)).astype(np.float32)
  y = rng.normal(size=(32, 5)).astype(np.float32)
  assert abs(float(losses.rbf_mmd(x, x))) < 1e-6
  # Terms of size ~1 cancel to ~0.04, so float32 order effects show at 1e-7 absolute.
  np.testing.assert_allclose(losses.rbf_mmd(x, y), losses.rbf_mmd(y, x), atol=1e-6)
  np.testing.assert_allclose(losses.rbf_mmd(x, y), _numpy_mmd(x, y, [25.0]), atol=1e-6)
  np.testing.assert_allclose(losses.rbf_mmd(x, y, (0.5, 2.0, 8.0)),
                             _numpy_mmd(x, y, [0.5, 2.0, 8.0]), atol=3e-6)
  shifts = [float(losses.rbf_mmd(x, x + d, (2.0,))) for d in (0.0, 0.25, 0.5, 1.0, 2.0)]
  assert all(b > a for a, b in zip(shifts, shifts[1:])), shifts


def test_mmd_official_kernel_is_k_squared():
  # The official code divides the squared distance by K twice: exp(-||a - b||^2 / K^2).
  x = np.zeros((1, 7), np.float32)
  y = np.full((1, 7), 1.0, np.float32)
  want = 2 - 2 * np.exp(-7.0 / 49.0)
  np.testing.assert_allclose(losses.rbf_mmd(x, y), want, rtol=1e-6)


def test_noise_mse_and_cross_entropy():
  e = jnp.array([[1.0, 2.0], [0.0, 0.0]])
  assert float(losses.noise_mse(e, jnp.zeros_like(e))) == 1.25
  logits = jnp.array([[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]])
  labels = jnp.array([0, 1, 1])
  per = -jax.nn.log_softmax(logits)[jnp.arange(3), labels]
  np.testing.assert_allclose(losses.cross_entropy(logits, labels, 2), per.mean(), rtol=1e-6)
  np.testing.assert_allclose(losses.cross_entropy(logits, labels, 2, jnp.array([1, 1, 0])),
                             per[:2].mean(), rtol=1e-6)


def test_prior_hardness_weights_and_weighted_mse():
  prior = jnp.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]])
  labels = jnp.array([0, 0, 2])
  w = losses.prior_hardness_weights(prior, labels, 10.0)
  np.testing.assert_allclose(w, [1 + 10 * 0.3, 1 + 10 * 0.9, 1 + 10 * (2 / 3)], rtol=1e-6)
  eps = jnp.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
  pred = jnp.zeros_like(eps)
  np.testing.assert_allclose(losses.noise_mse(eps, pred, w), (w[0] * 1 + w[1] * 4 + w[2] * 9) / 9,
                             rtol=1e-6)
  np.testing.assert_allclose(losses.noise_mse(eps, pred), 14 / 9, rtol=1e-6)
  # No gradient flows into the prior through the weight.
  g = jax.grad(lambda p: losses.prior_hardness_weights(p, labels, 10.0).sum())(prior)
  np.testing.assert_array_equal(g, 0.0)
