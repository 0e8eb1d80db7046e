"""AMSGrad as torch.optim.Adam(amsgrad=True) computes it, as an optax GradientTransformation.

torch keeps the running maximum of the *raw* second moment v_t and bias-corrects after:

    m_t = b1 m + (1 - b1) g,   v_t = b2 v + (1 - b2) g^2,   v_max = max(v_max, v_t)
    update = -lr * (m_t / (1 - b1^t)) / (sqrt(v_max) / sqrt(1 - b2^t) + eps)

`optax.amsgrad` instead keeps the maximum of the bias-corrected v_t / (1 - b2^t), which early in
training is the larger one, so the small-sample estimates of the first steps stay in the maximum
and shrink every later step. The official DCG optimizer is torch's.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class TorchAmsgradState(NamedTuple):
  count: jax.Array  # Steps taken, int32.
  mu: optax.Updates  # First moment m.
  nu: optax.Updates  # Raw second moment v.
  nu_max: optax.Updates  # Running maximum of the raw v.


def scale_by_torch_amsgrad(b1: float = 0.9, b2: float = 0.999,
                           eps: float = 1e-8) -> optax.GradientTransformation:
  """The AMSGrad direction (before the learning rate) with torch's order of max and correction."""

  def init_fn(params):
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    return TorchAmsgradState(jnp.zeros([], jnp.int32), zeros(), zeros(), zeros())

  def update_fn(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, updates)
    nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu)
    count = optax.safe_increment(state.count)
    t = count.astype(jnp.float32)
    c1, c2 = 1 - b1**t, jnp.sqrt(1 - b2**t)
    out = jax.tree.map(lambda m, v: (m / c1) / (jnp.sqrt(v) / c2 + eps), mu, nu_max)
    return out, TorchAmsgradState(count, mu, nu, nu_max)

  return optax.GradientTransformation(init_fn, update_fn)


def torch_amsgrad(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
                  eps: float = 1e-8) -> optax.GradientTransformation:
  """torch.optim.Adam(lr, betas=(b1, b2), eps, amsgrad=True, weight_decay=0)."""
  return optax.chain(scale_by_torch_amsgrad(b1, b2, eps),
                     optax.scale_by_learning_rate(learning_rate))
