"""The CARD schedule, forward process and samplers against closed forms and plain loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmic_jax import sampling
from diffmic_jax.diffusion import CARDSchedule, antithetic_timesteps


@pytest.fixture(scope='module')
def schedule():
  return CARDSchedule.create(1000, 'linear', 1e-4, 0.02)


def test_posterior_coefficients_match_float64_card(schedule):
  # CARD writes everything through sqrt(1 - abar); transcribe it that way, in float64.
  betas = np.linspace(1e-4, 0.02, 1000)
  alphas = 1 - betas
  omabs = np.sqrt(1 - np.cumprod(alphas))  # one_minus_alphas_bar_sqrt
  t = np.arange(1, 1000)
  sab_t = np.sqrt(1 - omabs[t]**2)
  sab_tm1 = np.sqrt(1 - omabs[t - 1]**2)
  g0 = (1 - alphas[t]) * sab_tm1 / omabs[t]**2
  g1 = omabs[t - 1]**2 * np.sqrt(alphas[t]) / omabs[t]**2
  g2 = 1 + (sab_t - 1) * (np.sqrt(alphas[t]) + sab_tm1) / omabs[t]**2
  var = omabs[t - 1]**2 / omabs[t]**2 * (1 - alphas[t])
  for got, want in [(schedule.gamma_0, g0), (schedule.gamma_1, g1), (schedule.gamma_2, g2),
                    (schedule.posterior_variance, var)]:
    np.testing.assert_allclose(np.asarray(got)[1:], want, rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(schedule.one_minus_alphas_bar_sqrt, omabs, rtol=1e-5)
  # Sanity of the posterior: gamma_0 + gamma_1 sqrt(abar_t) ... means y_t -> y_{t-1} keeps y_0 fixed.
  y0, yh = 0.7, -0.3
  mean_t = np.sqrt(np.cumprod(alphas)) * y0 + (1 - np.sqrt(np.cumprod(alphas))) * yh
  mu = g0 * y0 + g1 * mean_t[t] + g2 * yh
  np.testing.assert_allclose(mu, mean_t[t - 1], atol=1e-9)


@pytest.mark.parametrize('t', [0, 100, 500, 999])
def test_q_sample_moments(schedule, t):
  n, k = 200_000, 5
  key = jax.random.key(t)
  y0 = jax.nn.one_hot(jnp.full((n,), 2), k)
  y_hat = jnp.full((n, k), 0.2)
  y_t = schedule.q_sample(y0, y_hat, jnp.full((n,), t), jax.random.normal(key, (n, k)))
  a = float(schedule.alphas_bar_sqrt[t])
  want_mean = a * np.eye(k)[2] + (1 - a) * 0.2
  want_std = np.sqrt(1 - a**2)
  np.testing.assert_allclose(y_t.mean(0), want_mean, atol=5 * want_std / np.sqrt(n) + 1e-6)
  np.testing.assert_allclose(y_t.std(0), want_std, rtol=0.01)
  # A scalar t gives the same as a broadcast vector t.
  np.testing.assert_allclose(schedule.q_sample(y0[:3], y_hat[:3], t, jnp.ones((3, k))),
                             schedule.q_sample(y0[:3], y_hat[:3], jnp.full((3,), t), jnp.ones((3, k))))


def test_antithetic_timesteps():
  t = np.asarray(antithetic_timesteps(jax.random.key(0), 9, 1000))
  assert t.shape == (9,) and t.min() >= 0 and t.max() < 1000
  np.testing.assert_array_equal(t[5:], 999 - t[:4])


def _oracle(schedule, y0, y_hat):
  """The eps that makes y0_tilde exactly y0: what a perfect network predicts."""
  def eps_fn(y_t, t):
    a = schedule.alphas_bar_sqrt[t]
    return (y_t - a * y0 - (1 - a) * y_hat) / schedule.one_minus_alphas_bar_sqrt[t]
  return eps_fn


@pytest.mark.parametrize('method,steps', [('full', 1000), ('truncated', 60), ('matched', 60), ('ddim', 10)])
def test_chain_driven_by_true_noise_recovers_y0(schedule, method, steps):
  k = 5
  y0 = jax.nn.one_hot(jnp.array([0, 3, 4]), k)
  y_hat = jax.nn.softmax(jax.random.normal(jax.random.key(1), (3, k)))
  eps_fn = _oracle(schedule, jnp.tile(y0, (4, 1)), jnp.tile(y_hat, (4, 1)))  # 4 samples tiled
  head = lambda feats, y_t, pr, t: eps_fn(y_t, t[0])
  probs = sampling.sample_probs(schedule, head, jnp.zeros((3, 1)), y_hat, y_hat, jax.random.key(2),
                                method=method, num_steps=steps, num_samples=4)
  assert probs.shape == (4, 3, k)
  np.testing.assert_allclose(probs, jnp.broadcast_to(jax.nn.softmax(y0), probs.shape), atol=1e-4)


def test_scan_equals_python_loop(schedule):
  k, n = 5, 6
  w = jax.random.normal(jax.random.key(3), (k, k)) * 0.1
  y_hat = jax.nn.softmax(jax.random.normal(jax.random.key(4), (n, k)))
  eps_fn = lambda y_t, t: jnp.tanh(y_t @ w) * (1.0 + t / 1000.0)
  key = jax.random.key(5)
  for steps, matched in ((1000, False), (60, False), (60, True)):
    got = jax.jit(lambda: sampling.ancestral_chain(schedule, eps_fn, y_hat, key, steps, matched))()
    start_std = np.sqrt(1 - np.asarray(schedule.alphas_bar)[steps - 1]) if matched else 1.0
    y = y_hat + start_std * jax.random.normal(jax.random.fold_in(key, 1000), y_hat.shape)
    for t in range(steps - 1, 0, -1):
      z = jax.random.normal(jax.random.fold_in(key, t), y.shape)
      y = schedule.p_sample_step(y, y_hat, t, eps_fn(y, t), z)
    want = schedule.last_step(y, y_hat, eps_fn(y, 0))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # The DDIM chain likewise.
  got = sampling.ddim_chain(schedule, eps_fn, y_hat, key, 10)
  ts = sampling.ddim_timesteps(1000, 10)
  assert ts[0] == 999 and ts[-1] == 0 and len(ts) == 10
  y = y_hat + jax.random.normal(jax.random.fold_in(key, 1000), y_hat.shape)
  for i, t in enumerate(ts):
    s = ts[i + 1] if i + 1 < len(ts) else -1
    y = schedule.ddim_step(y, y_hat, t, s, eps_fn(y, t))
  np.testing.assert_allclose(got, y, rtol=1e-5, atol=1e-5)


def test_samples_differ_and_bad_arguments(schedule):
  y_hat = jnp.full((2, 3), 1 / 3)
  head = lambda feats, y_t, pr, t: jnp.zeros_like(y_t)
  probs = sampling.sample_probs(schedule, head, jnp.zeros((2, 1)), y_hat, y_hat, jax.random.key(0),
                                method='truncated', num_steps=60, num_samples=3)
  assert not np.allclose(probs[0], probs[1])  # independent chains per sample
  with pytest.raises(ValueError, match='sampler'):
    sampling.sample_probs(schedule, head, jnp.zeros((2, 1)), y_hat, y_hat, jax.random.key(0),
                          method='ddpm', num_steps=60)
  with pytest.raises(ValueError, match='num_steps'):
    sampling.ancestral_chain(schedule, lambda y, t: y, y_hat, jax.random.key(0), 1001)


@pytest.mark.parametrize('name', ['linear', 'quadratic', 'cosine'])
def test_schedules_are_valid(name):
  s = CARDSchedule.create(100, name)
  b = np.asarray(s.betas)
  assert np.all(b > 0) and np.all(b < 1) and np.all(np.diff(np.asarray(s.alphas_bar)) < 0)
  with pytest.raises(ValueError, match='beta_schedule'):
    CARDSchedule.create(100, 'sigmoid')
