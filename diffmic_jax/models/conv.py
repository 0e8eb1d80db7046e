"""The convolution and stem max-pool the ResNets use, written for the kernels XLA runs fast.

XLA's CPU backend hands every convolution to one generic kernel, which is quick for 3x3 maps of
8x8 pixels and up but slow elsewhere. Measured on the 2-core CPU at batch 32 (global stream,
224 px) and 192 (local stream, 32 px tiles) by `python bench/conv_kernels.py`
(bench/results/conv_kernels.json):

- 1x1 convolutions: 1.7-4.2x slower than the same product as a matmul, forward plus both
  gradients (56x56, 64 -> 256 channels: forward 94 vs 48 ms, kernel gradient 346 vs 55 ms). About
  half of ResNet50's FLOPs are in 1x1 convolutions.
- 3x3 convolutions whose output is 2x2 or smaller, i.e. the local stream's 32 px tiles in ResNet
  stages 3-4: 9-40x slower than patches-times-kernel (2x2 -> 1x1, 512 channels, stride 2: 633 vs
  16 ms forward + backward).
- The max-pool's gradient (select-and-scatter): 461 ms against 108 ms for a maximum of nine views.

So `Conv` picks a matmul form where that wins and XLA's convolution elsewhere. On GPU and TPU the
matmul forms are plain matmuls, which those compilers handle well, but they have not been timed
there yet (the H200 figures in the README predate this module). The parameter is
nn.Conv's, a (kh, kw, in, out) `kernel` with the same initialiser and name, so checkpoints,
converted torchvision weights and seeded inits are unchanged, and the values agree with nn.Conv to
float rounding (tests/test_models.py).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# torchvision initialises convs with kaiming_normal(mode='fan_out', nonlinearity='relu').
kaiming_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# Output maps with at most this many pixels use patches-times-kernel. Measured crossover: a 4x4
# output was 22 ms by convolution vs 22 ms by patches (128 channels); 2x2 was 238 vs 17 ms.
_PATCH_MAX_PIXELS = 4


class Conv(nn.Module):
  """Bias-free square convolution with torchvision's symmetric padding (kernel - 1) // 2."""
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
    if jax.default_backend() == 'cpu':
      x = _materialized(x)
    return jax.lax.conv_general_dilated(x, w, (s, s), [(pad, pad), (pad, pad)],
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _materialized(x):
  """x as the buffer the forward convolution reads, never recomputed by a later consumer.

  For a 3x3 kernel gradient, XLA's CPU backend transposes the convolution's input to
  (in, h, w, batch). JAX 0.12's XLA fuses the BatchNorm, residual add and ReLU that produced x into
  that transpose, so it recomputes them while reading four or five (batch, h, w, in) tensors in
  transposed order (272 ms for one 56x56x64 map at batch 32, in `bench/profile_step.py`). Behind
  the barrier the transpose reads x once. ResNet50 joint step at 224 px on the 2-core CPU, both
  forms compiled in one process and run alternately, two runs: 11.11 -> 10.69 s and
  11.21 -> 10.73 s on JAX 0.12, for 0.25 GB more of XLA's temporaries (2.69 -> 2.93 GB); on
  JAX 0.10 its temporaries (2.69 GB) and speed (12.51 vs 12.59 s) are unchanged. CPU only: XLA's TPU
  compiler fuses a convolution's elementwise producers into it, which the barrier would stop, and
  no accelerator has been timed with it.
  """
  return jax.lax.optimization_barrier(x)


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


def max_pool_3x3_s2(x):
  """torchvision's stem max-pool (3x3, stride 2, padding 1) as the maximum of nine strided views.

  The values equal nn.max_pool's. Where a window holds tied maxima the gradient is shared among
  them rather than given to one; after the stem's ReLU such ties are zeros, whose ReLU gradient is
  zero either way (gradients equal in float64, tests/test_models.py).
  """
  return functools.reduce(jnp.maximum, _windows(x, 3, 2, 1, -jnp.inf))
