"""The models' BatchNorm against float64 references of torch's BatchNorm statistics."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffmic_jax.models import DCG, EpsilonNet, batch_norm


def _train_apply(module, x):
  variables = module.init(jax.random.key(0), x, use_running_average=False)
  return module.apply(variables, x, use_running_average=False, mutable=['batch_stats'])


def _features(seed, n, c, offset):
  """(n, c) float32 values with |mean| / std = offset, as in the epsilon network's feature BN."""
  rng = np.random.default_rng(seed)
  return (offset + rng.standard_normal((n, c))).astype(np.float32)


def test_running_variance_moves_towards_the_unbiased_batch_variance():
  x = _features(0, 6, 4, 0.0)
  _, updates = _train_apply(batch_norm.BatchNorm(momentum=0.9), jnp.asarray(x))
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(updates['batch_stats']['var'], 0.9 + 0.1 * x64.var(0, ddof=1),
                             rtol=1e-6)
  np.testing.assert_allclose(updates['batch_stats']['mean'], 0.1 * x64.mean(0), atol=1e-7)
  # Flax's BatchNorm moves towards the biased variance: 1/(n-1) = 20% too little here.
  _, flax_updates = _train_apply(nn.BatchNorm(momentum=0.9), jnp.asarray(x))
  assert not np.allclose(flax_updates['batch_stats']['var'], 0.9 + 0.1 * x64.var(0, ddof=1),
                         rtol=1e-3)


def test_normalises_with_the_biased_batch_variance():
  x = _features(1, 8, 3, 2.0)
  y, _ = _train_apply(batch_norm.BatchNorm(epsilon=1e-5), jnp.asarray(x))
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(y, (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5), atol=1e-5)


def test_batch_variance_is_exact_when_the_mean_dwarfs_the_spread():
  x = _features(2, 512, 64, 87.0)
  x64 = x.astype(np.float64)
  ref = x64.var(0)
  _, var, n = batch_norm.batch_moments(jnp.asarray(x))
  assert n == 512
  assert np.max(np.abs(np.asarray(var) / ref - 1)) < 2e-5
  # E[x^2] - E[x]^2, Flax's default, is off by orders of magnitude more on the same data.
  _, flax_updates = _train_apply(nn.BatchNorm(momentum=0.0), jnp.asarray(x))
  fast = np.asarray(flax_updates['batch_stats']['var'])
  assert np.max(np.abs(fast / ref - 1)) > 1e-4


def test_reduces_over_every_axis_but_channels():
  x = _features(3, 2 * 3 * 5, 4, 1.0).reshape(2, 3, 5, 4)
  _, updates = _train_apply(batch_norm.BatchNorm(momentum=0.0), jnp.asarray(x))
  flat = x.reshape(-1, 4).astype(np.float64)
  np.testing.assert_allclose(updates['batch_stats']['var'], flat.var(0, ddof=1), rtol=1e-5)


def _norm_types(model, *args, **kwargs):
  """The classes of every module that owns batch statistics in one train-mode pass."""
  seen = set()

  def record(next_fn, args, kwargs, context):
    if context.method_name == '__call__' and 'BatchNorm' in type(context.module).__name__:
      seen.add(type(context.module))
    return next_fn(*args, **kwargs)

  variables = model.init(jax.random.key(0), *args)
  with nn.intercept_methods(record):
    model.apply(variables, *args, **kwargs, mutable=['batch_stats'])
  return seen


def test_models_use_the_torch_semantics_batch_norm():
  x = jnp.zeros((2, 32, 32, 3))
  dcg = DCG(3, backbone='resnet_tiny', small_stem=True, width=4)
  assert _norm_types(dcg, x, train=True) == {batch_norm.BatchNorm}
  eps = EpsilonNet(3, num_timesteps=10, feature_dim=8, backbone='resnet_tiny', small_stem=True,
                   width=4)
  y = jnp.zeros((2, 3))
  assert _norm_types(eps, x, y, y, jnp.zeros((2,), jnp.int32), train=True) == {batch_norm.BatchNorm}
