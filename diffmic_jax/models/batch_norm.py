"""BatchNorm with torch's statistics and torch's analytic backward.

Same variables as `flax.linen.BatchNorm` (params `scale`, `bias`; batch_stats `mean`, `var`), so
checkpoints and converted torchvision weights load unchanged. Three things differ from Flax's
defaults, the first two to match torch's BatchNorm1d/2d number for number:

- The batch variance is the two-pass mean((x - mean)^2), not E[x^2] - E[x]^2, which loses digits
  when |mean| >> std (the epsilon network's feature BatchNorm reaches |mean|/std of ~87).
- The running variance moves towards the unbiased batch variance, var * n / (n - 1) with n the
  values per channel, as torch does; normalisation still uses the biased one.
- In train mode the gradient is torch's closed form (`train_norm`): autodiff through the two-pass
  variance keeps x - mean and its square for the backward pass besides the input, where the
  closed form needs only the input and two per-channel vectors.
"""

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


def _stats_dtype(dtype):
  # float32 statistics for float32 and narrower inputs; float64 ones for float64 inputs.
  return jnp.promote_types(dtype, jnp.float32)


def batch_moments(x) -> tuple:
  """Per-channel (mean, biased variance, n) over every axis but the last, in float32, two-pass."""
  axes = tuple(range(x.ndim - 1))
  x = x.astype(_stats_dtype(x.dtype))
  mean = jnp.mean(x, axis=axes)
  var = jnp.mean(jnp.square(x - mean), axis=axes)
  return mean, var, x.size // x.shape[-1]


def _normalize(x, mean, var, scale, bias, epsilon, dtype):
  x, mean, var, scale, bias = nn.dtypes.promote_dtype(x, mean, var, scale, bias, dtype=dtype)
  return (x - mean) * (scale * jax.lax.rsqrt(var + epsilon)) + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def train_norm(x, scale, bias, epsilon: float, dtype=None):
  """Train-mode BatchNorm over the last axis: (output, batch mean, biased batch variance).

  The forward pass is `batch_moments` and the eval-mode formula; the backward pass is torch's
  batch_norm_backward, from the input and the per-channel mean and 1/std alone.
  """
  mean, var, _ = batch_moments(x)
  return _normalize(x, mean, var, scale, bias, epsilon, dtype), mean, var


def _train_norm_fwd(x, scale, bias, epsilon, dtype):
  mean, var, _ = batch_moments(x)
  y = _normalize(x, mean, var, scale, bias, epsilon, dtype)
  return (y, mean, var), (x, scale, mean, jax.lax.rsqrt(var + epsilon))


def _train_norm_bwd(epsilon, dtype, saved, cotangents):
  del epsilon, dtype
  x, scale, mean, inv_std = saved
  g, g_mean, g_var = cotangents
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  f = mean.dtype
  g = g.astype(f)
  x_hat = (x.astype(f) - mean) * inv_std
  g_bias = jnp.sum(g, axis=axes)
  g_scale = jnp.sum(g * x_hat, axis=axes)
  # dx = scale/std (g - mean(g) - x_hat mean(g x_hat)), plus what the statistics' own cotangents
  # add (d mean/dx = 1/n, d var/dx = 2 (x - mean)/n), folded into per-channel coefficients.
  a = scale.astype(f) * inv_std
  b = (2 * g_var / inv_std - a * g_scale) / n
  c = (g_mean - a * g_bias) / n
  g_x = (a * g + b * x_hat + c).astype(x.dtype)
  return g_x, g_scale.astype(scale.dtype), g_bias.astype(scale.dtype)


train_norm.defvjp(_train_norm_fwd, _train_norm_bwd)


class BatchNorm(nn.Module):
  """torch-semantics BatchNorm over the last axis.

  Attributes:
    use_running_average: eval mode (running statistics); may instead be given per call.
    momentum: Flax convention, the weight kept by the running averages (torch's 0.1 is 0.9 here).
    epsilon: added to the variance before the square root.
    dtype: output / compute dtype; statistics are always float32.
  """
  use_running_average: Optional[bool] = None
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = None

  @nn.compact
  def __call__(self, x, use_running_average: Optional[bool] = None):
    use_running_average = nn.merge_param('use_running_average', self.use_running_average,
                                         use_running_average)
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, features, jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, features, jnp.float32)
    scale = self.param('scale', nn.initializers.ones, features, jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, features, jnp.float32)

    if use_running_average:
      return _normalize(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon, self.dtype)
    y, mean, var = train_norm(x, scale, bias, self.epsilon, self.dtype)
    if not self.is_initializing():
      n = x.size // x.shape[-1]
      unbiased = var * (n / max(n - 1, 1))
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased
    return y
