"""DiffMIC's losses: noise MSE, RBF-kernel MMD between noise batches, and cross-entropy.

The MMD compares the batch of true noise vectors with the batch of predicted ones as two samples
of a distribution, which is what lets the global and local priors shape eps_theta without forcing
each prediction to match its own noise. The official kernel is exp(-||a - b||^2 / K^2) (its code
divides the squared distance by K twice); `bandwidths` makes sigma^2 explicit, and several values
give the usual multi-bandwidth sum.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import optax


def noise_mse(eps, eps_pred, weights=None):
  """mean((eps - eps_theta)^2) over batch and classes; with `weights` (B,), each image's squared
  error scaled by its weight before the mean."""
  sq = jnp.square(eps - eps_pred)
  if weights is not None:
    sq = sq * weights[:, None]
  return jnp.mean(sq)


def prior_hardness_weights(prior, labels, alpha: float):
  """1 + alpha (1 - p_true), p_true the prior's probability of the label, no gradient: the
  DiffMIC-v2 noise-loss weight (Yang et al., IEEE TMI 2025; its code's gamma = 1), which puts up
  to 1 + alpha times the weight on images whose prior is wrong or unsure."""
  p_true = jnp.take_along_axis(prior, labels[:, None], axis=-1)[:, 0]
  return jax.lax.stop_gradient(1.0 + alpha * (1.0 - p_true))


def _sq_dists(a, b):
  return jnp.sum(jnp.square(a[:, None, :] - b[None, :, :]), axis=-1)


def rbf_mmd(x, y, bandwidths: Sequence[float] = ()):
  """Biased (V-statistic) squared MMD between samples x (N, D) and y (M, D).

  MMD^2 = mean k(x, x') + mean k(y, y') - 2 mean k(x, y), k(a, b) = sum_s exp(-||a - b||^2 / s).

  Args:
    x, y: two batches of vectors.
    bandwidths: squared bandwidths s; () means the official single kernel with s = D^2.

  Returns:
    A scalar, 0 when x and y are the same batch.
  """
  x, y = x.astype(jnp.float32), y.astype(jnp.float32)
  scales = tuple(bandwidths) or (float(x.shape[-1])**2,)

  def kernel_mean(a, b):
    d = _sq_dists(a, b)
    return sum(jnp.mean(jnp.exp(-d / s)) for s in scales)

  return kernel_mean(x, x) + kernel_mean(y, y) - 2 * kernel_mean(x, y)


def cross_entropy(logits, labels, num_classes: int, mask=None):
  """Mean softmax cross-entropy against integer labels; `mask` excludes padded examples."""
  losses = optax.softmax_cross_entropy(logits.astype(jnp.float32),
                                       jax.nn.one_hot(labels, num_classes))
  if mask is None:
    return jnp.mean(losses)
  mask = mask.astype(jnp.float32)
  return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)
