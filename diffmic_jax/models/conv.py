"""The ResNets' convolutions and stem max-pool: flax's own, or forms XLA:CPU runs faster.

`conv(...)` returns a plain `nn.Conv` unless `cpu_tuning` is set, when it returns `CpuConv`: 1x1
convolutions and 3x3 convolutions with tiny outputs become matmuls, which XLA's CPU backend runs
several times faster than its generic convolution kernel (bench/conv_kernels.py). Both keep the
parameter a (kh, kw, in, out) `kernel` with the same initialiser and name, so checkpoints and
converted torchvision weights work with either, and the values agree to float rounding.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# torchvision initialises convs with kaiming_normal(mode='fan_out', nonlinearity='relu').
kaiming_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# Output maps with at most this many pixels use patches-times-kernel (the measured crossover).
_PATCH_MAX_PIXELS = 4


def conv(features: int, kernel: int, stride: int = 1, *, cpu_tuning: bool = False,
         kernel_init: Any = kaiming_fan_out, dtype: Any = jnp.float32, name: str | None = None):
  """Bias-free square convolution with torchvision's symmetric padding (kernel - 1) // 2."""
  if cpu_tuning:
    return CpuConv(features, kernel, stride, kernel_init, dtype, name=name)
  pad = (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=[(pad, pad)] * 2,
                 use_bias=False, kernel_init=kernel_init, dtype=dtype, name=name)


def max_pool_3x3_s2(x, cpu_tuning: bool = False):
  """torchvision's stem max-pool: 3x3 windows, stride 2, padding 1."""
  if cpu_tuning:
    return _max_of_views(x)
  return nn.max_pool(x, (3, 3), (2, 2), padding=[(1, 1), (1, 1)])


class CpuConv(nn.Module):
  """`nn.Conv`'s parameters and values, computed in the form XLA:CPU runs fastest."""
  features: int
  kernel: int
  stride: int = 1
  kernel_init: Any = kaiming_fan_out
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, s = self.kernel, self.stride
    w = self.param('kernel', self.kernel_init, (k, k, x.shape[-1], self.features), jnp.float32)
    x, w = nn.dtypes.promote_dtype(x, w, dtype=self.dtype)
    pad = (k - 1) // 2
    if k == 1:
      return _matmul(x[:, ::s, ::s], w)
    if _out_size(x.shape[1], k, s, pad) * _out_size(x.shape[2], k, s, pad) <= _PATCH_MAX_PIXELS:
      patches = jnp.concatenate(_windows(x, k, s, pad, 0.0), axis=-1)  # tap-major, as HWIO
      return _matmul(patches, w)
    # The barrier stops XLA:CPU recomputing x's producers inside the kernel gradient's transpose.
    x = jax.lax.optimization_barrier(x)
    return jax.lax.conv_general_dilated(x, w, (s, s), [(pad, pad), (pad, pad)],
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _matmul(x, w):
  """(B, h, w, kh*kw*in) patches times a (kh, kw, in, out) kernel, as one 2-D matmul."""
  lead = x.shape[:-1]
  return (x.reshape(-1, x.shape[-1]) @ w.reshape(-1, w.shape[-1])).reshape(*lead, w.shape[-1])


def _out_size(n, k, s, pad):
  return (n + 2 * pad - k) // s + 1


def _windows(x, k, s, pad, pad_value):
  """The k*k views (B, out_h, out_w, C) of x padded by `pad`, one per kernel tap, row-major.

  View (i, j) holds, for every output pixel, the input under tap (i, j) of its k x k window.
  """
  out_h, out_w = (_out_size(n, k, s, pad) for n in x.shape[1:3])
  x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=pad_value)
  return [x[:, i:i + s * (out_h - 1) + 1:s, j:j + s * (out_w - 1) + 1:s]
          for i in range(k) for j in range(k)]


def _max_of_views(x):
  """The stem max-pool as the maximum of nine strided views: XLA:CPU's select-and-scatter
  gradient is slow. Tied maxima share the gradient; after the stem's ReLU they are zeros, whose
  gradient is zero either way."""
  return functools.reduce(jnp.maximum, _windows(x, 3, 2, 1, -jnp.inf))
