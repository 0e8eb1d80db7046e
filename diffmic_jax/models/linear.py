"""torch's default initial values for the layers that are not ResNet convolutions.

torch.nn.Linear and nn.Conv2d draw weights and biases from U(-1/sqrt(fan_in), 1/sqrt(fan_in));
Flax's defaults (lecun_normal weights, zero biases) start with weights sqrt(3) times wider in
spread and no bias. The official DiffMIC keeps torch's defaults for its epsilon network's linear
layers and the DCG's heads, so these start there too.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch's kaiming_uniform(a=sqrt(5)).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def torch_bias_init(fan_in: int):
  bound = 1.0 / max(fan_in, 1) ** 0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class Linear(nn.Module):
  """nn.Dense (same `kernel` and `bias` variables) with torch.nn.Linear's initial values."""
  features: int
  use_bias: bool = True
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    kernel = self.param('kernel', torch_kernel_init, (fan_in, self.features), jnp.float32)
    bias = (self.param('bias', torch_bias_init(fan_in), (self.features,), jnp.float32)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
    return y if bias is None else y + bias
