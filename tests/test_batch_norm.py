"""The models' BatchNorm against float64 references of torch's BatchNorm statistics."""

import contextlib
import io

import flax.linen as nn
import jax
from jax import ad_checkpoint
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


def _autodiff_batch_norm(x, scale, bias, epsilon):
  """The train-mode forward written out, for autodiff: (output, mean, biased variance)."""
  mean = jnp.mean(x, axis=(0, 1, 2))
  var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
  return (x - mean) * (scale * jax.lax.rsqrt(var + epsilon)) + bias, mean, var


def test_closed_form_gradients_equal_autodiff_in_float64():
  x64_before = jax.config.jax_enable_x64
  jax.config.update('jax_enable_x64', True)
  try:
    rng = np.random.default_rng(4)
    x = jnp.asarray(3.0 + 0.5 * rng.standard_normal((4, 3, 5, 6)))
    scale, bias = jnp.asarray(rng.standard_normal(6)), jnp.asarray(rng.standard_normal(6))
    # Cotangents for all three outputs: the statistics' own feed the running averages.
    cot = (jnp.asarray(rng.standard_normal(x.shape)), jnp.asarray(rng.standard_normal(6)),
           jnp.asarray(rng.standard_normal(6)))
    out, vjp = jax.vjp(lambda *a: batch_norm.train_norm(*a, 1e-5), x, scale, bias)
    ref_out, ref_vjp = jax.vjp(lambda *a: _autodiff_batch_norm(*a, 1e-5), x, scale, bias)
    assert out[0].dtype == jnp.float64 and out[1].dtype == jnp.float64
    for got, want in zip(out + vjp(cot), ref_out + ref_vjp(cot)):
      np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)

    # Through the module, as the models call it: the loss reads the output only.
    module = batch_norm.BatchNorm(use_running_average=False)
    variables = module.init(jax.random.key(0), x)

    def loss(params, x):
      y, _ = module.apply({**variables, 'params': params}, x, mutable=['batch_stats'])
      return jnp.sum(jnp.sin(y))

    def ref_loss(params, x):
      return jnp.sum(jnp.sin(_autodiff_batch_norm(x, params['scale'], params['bias'], 1e-5)[0]))

    params = {'scale': scale, 'bias': bias}
    got, want = jax.grad(loss, (0, 1))(params, x), jax.grad(ref_loss, (0, 1))(params, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12), got, want)
  finally:
    jax.config.update('jax_enable_x64', x64_before)


def test_backward_keeps_only_the_input_at_full_size():
  x = jnp.asarray(_features(5, 2 * 4 * 4, 8, 1.0).reshape(2, 4, 4, 8))
  scale, bias = jnp.ones(8), jnp.zeros(8)

  def full_size(fn):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
      ad_checkpoint.print_saved_residuals(lambda *a: fn(*a, 1e-5)[0].sum(), x, scale, bias)
    return printed.getvalue().count('[2,4,4,8]')

  assert full_size(batch_norm.train_norm) == 1
  assert full_size(_autodiff_batch_norm) > 1
