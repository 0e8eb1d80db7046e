"""The conditional noise network eps_theta(x, y_t, y_hat, t) of DiffMIC (CARD's ConditionalModel).

    rho(x) = BN(Linear_{C->F}(ResNet18(x)))                              image features (B, F)
    h1 = softplus(BN(Linear([y_t, y_hat]) * gamma_1[t])) * rho(x)        labels meet the image
    h2 = softplus(BN(Linear(h1) * gamma_2[t]));  h3 = likewise on h2
    eps = Linear_{F->K}(h3)

gamma_i are learned timestep embeddings, Embed(T + 1, F) initialised U(0, 1) as in CARD; the linear
layers start from torch's defaults (models/linear.py), as officially.

The image features do not depend on y_t or t, so `encode` is separate from `head`: a train step
encodes once and runs the head for the three priors (the gradient equals three full passes), and a
sampler encodes once per image for all reverse steps instead of once per step.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from diffmic_jax.models import batch_norm, resnet
from diffmic_jax.models.linear import Linear


def _batch_norm(dtype: Any) -> batch_norm.BatchNorm:
  # torch BatchNorm1d defaults: momentum 0.1, eps 1e-5, torch's variance estimates. Train/eval is
  # chosen per call.
  return batch_norm.BatchNorm(momentum=0.9, epsilon=1e-5, dtype=dtype)


class ConditionalLinear(nn.Module):
  """Linear(x) * gamma[t], gamma = Embed(T + 1, features) initialised U(0, 1)."""
  features: int
  num_timesteps: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, t):
    y = Linear(self.features, dtype=self.dtype, name='linear')(x)
    gamma = nn.Embed(self.num_timesteps + 1, self.features, embedding_init=nn.initializers.uniform(1.0),
                     dtype=self.dtype, name='embed')(t)
    return y * gamma


class EpsilonNet(nn.Module):
  """Attributes:
    num_classes: K.
    num_timesteps: T (the embeddings have T + 1 rows, as in CARD).
    feature_dim: F, 6144 in the official model.
    backbone: encoder trunk name ('resnet18' officially).
    prior_input: 'fused' feeds [y_t, y_hat] (official code); 'global_local' feeds
      [y_t, y_hat_g, y_hat_l] (the paper's formulation).
  """
  num_classes: int
  num_timesteps: int = 1000
  feature_dim: int = 6144
  backbone: str = 'resnet18'
  small_stem: bool = False
  width: int = 64
  prior_input: str = 'fused'
  dtype: Any = jnp.float32
  cpu_tuning: bool = False  # models/conv.py's XLA:CPU forms in the encoder.
  remat: str = 'none'  # The train-mode encoder: resnet.ResNet.remat.

  def setup(self):
    if self.prior_input not in ('fused', 'global_local'):
      raise ValueError(f"prior_input must be 'fused' or 'global_local', got {self.prior_input!r}")
    self.encoder = resnet.backbone(self.backbone, output='pooled', small_stem=self.small_stem,
                                   width=self.width, dtype=self.dtype,
                                   cpu_tuning=self.cpu_tuning, remat=self.remat)
    self.project = Linear(self.feature_dim, dtype=self.dtype)
    self.feature_bn = _batch_norm(self.dtype)
    self.layers = [ConditionalLinear(self.feature_dim, self.num_timesteps, self.dtype)
                   for _ in range(3)]
    self.norms = [_batch_norm(self.dtype) for _ in range(3)]
    self.out = Linear(self.num_classes, dtype=jnp.float32)

  def encode(self, images, train: bool = False):
    """rho(x): (B, H, W, 3) -> (B, F). Independent of y_t and t."""
    feats = self.project(self.encoder(images, train))
    return self.feature_bn(feats, use_running_average=not train)

  def head(self, features, y_t, priors, t, train: bool = False):
    """eps_theta given precomputed features.

    Args:
      features: (B, F) from `encode`.
      y_t: (B, K) noisy label vector.
      priors: (B, K) fused prior for 'fused', or a tuple (y_hat_g, y_hat_l) for 'global_local'.
      t: (B,) int timesteps in [0, T).
      train: batch statistics (True) or running averages (False) in the BatchNorms.
    """
    priors = tuple(priors) if isinstance(priors, (tuple, list)) else (priors,)
    expected = 1 if self.prior_input == 'fused' else 2
    if len(priors) != expected:
      raise ValueError(f'prior_input={self.prior_input!r} takes {expected} prior(s), got {len(priors)}')
    h = jnp.concatenate([y_t, *priors], axis=-1).astype(self.dtype)
    for i, (layer, norm) in enumerate(zip(self.layers, self.norms)):
      h = nn.softplus(norm(layer(h, t), use_running_average=not train))
      if i == 0:
        h = h * features.astype(self.dtype)
    return self.out(h).astype(jnp.float32)

  def __call__(self, images, y_t, priors, t, train: bool = False):
    return self.head(self.encode(images, train), y_t, priors, t, train)


def head_fn(model: EpsilonNet, variables: dict):
  """eps_theta(features, y_t, priors, t) in eval mode, for samplers."""
  def fn(features, y_t, priors, t):
    return model.apply(variables, features, y_t, priors, t, False, method=EpsilonNet.head)
  return fn

