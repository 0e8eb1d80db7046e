"""BatchNorm with torch's statistics: exact batch variance, unbiased running variance.

Same variables as `flax.linen.BatchNorm` (params `scale`, `bias`; batch_stats `mean`, `var`), so
checkpoints and converted torchvision weights load unchanged. Two things differ from Flax's
defaults, both to match torch's BatchNorm1d/2d number for number:

- The batch variance is the two-pass mean((x - mean)^2), not E[x^2] - E[x]^2, which loses digits
  when |mean| >> std (the epsilon network's feature BatchNorm reaches |mean|/std of ~87).
- The running variance moves towards the unbiased batch variance, var * n / (n - 1) with n the
  values per channel, as torch does; normalisation still uses the biased one.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


def batch_moments(x) -> tuple:
  """Per-channel (mean, biased variance, n) over every axis but the last, in float32, two-pass."""
  axes = tuple(range(x.ndim - 1))
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=axes)
  var = jnp.mean(jnp.square(x - mean), axis=axes)
  return mean, var, x.size // x.shape[-1]


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
      mean, var = ra_mean.value, ra_var.value
    else:
      mean, var, n = batch_moments(x)
      if not self.is_initializing():
        unbiased = var * (n / max(n - 1, 1))
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased

    x, mean, var, scale, bias = nn.dtypes.promote_dtype(x, mean, var, scale, bias, dtype=self.dtype)
    return (x - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias
