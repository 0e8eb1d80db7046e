"""DCG: the dual-granularity conditional guidance classifier that supplies DiffMIC's priors.

A global stream turns the whole image into a K-channel saliency map whose aggregate is y_g; the k
most salient grid cells are cut out of the image and a local stream, pooled by gated attention,
gives y_l; the fused logits are 0.5 (y_g + y_l). The diffusion is conditioned on softmax of those.

ROI choice follows the official code: min-max normalise each class map over its cells, sum over
classes, take the top-k cells, and cut the image tile under each cell. The official greedy loop
(argmax, zero the cell, repeat) picks the same cells as `lax.top_k` except among ties at 0, so this
is one vectorised gather: no Python loop, no host round trip, no gradient through positions.

The grid is the global trunk's output grid and the tile side is image_size / grid (rounded up, the
image zero-padded to fit), so 224 px gives the official 7x7 grid of 32 px tiles and small inputs
still work. The official code crops colour channel 0 only and repeats it; `crop_first_channel`
reproduces that, and the default keeps all three channels.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffmic_jax.models import conv, resnet
from diffmic_jax.models.linear import Linear, torch_kernel_init


def top_t_percent_mean(saliency: jax.Array, t: float) -> jax.Array:
  """Mean of the top ceil(t * cells) values of each class map: (B, h, w, K) -> (B, K)."""
  b, h, w, k = saliency.shape
  cells = saliency.reshape(b, h * w, k)
  n = max(1, math.ceil(t * h * w))
  if n >= h * w:
    return cells.mean(axis=1)
  top = jax.lax.top_k(jnp.swapaxes(cells, 1, 2), n)[0]  # (B, K, n)
  return top.mean(axis=-1)


def select_rois(saliency: jax.Array, num_rois: int) -> jax.Array:
  """Indices (B, k) of the k cells with the largest summed min-max-normalised saliency.

  A constant class map (max == min) contributes 0 instead of the official NaN.
  """
  b, h, w, k = saliency.shape
  cells = jax.lax.stop_gradient(saliency).reshape(b, h * w, k).astype(jnp.float32)
  lo = cells.min(axis=1, keepdims=True)
  span = cells.max(axis=1, keepdims=True) - lo
  norm = jnp.where(span > 0, (cells - lo) / jnp.where(span > 0, span, 1.0), 0.0)
  return jax.lax.top_k(norm.sum(axis=-1), num_rois)[1]


def crop_tiles(images: jax.Array, cell_index: jax.Array, grid: tuple[int, int]):
  """Cuts the image tile under each chosen grid cell.

  Args:
    images: (B, H, W, C).
    cell_index: (B, k) flat indices into the (gh, gw) grid.
    grid: (gh, gw), the saliency map's spatial shape.

  Returns:
    tiles (B, k, th, tw, C) and boxes (B, k, 4) as pixel (top, left, bottom, right), exclusive.
  """
  b, hgt, wid, c = images.shape
  gh, gw = grid
  th, tw = -(-hgt // gh), -(-wid // gw)
  padded = jnp.pad(images, ((0, 0), (0, gh * th - hgt), (0, gw * tw - wid), (0, 0)))
  patches = padded.reshape(b, gh, th, gw, tw, c).transpose(0, 1, 3, 2, 4, 5)
  patches = patches.reshape(b, gh * gw, th, tw, c)
  tiles = jnp.take_along_axis(patches, cell_index[:, :, None, None, None], axis=1)
  row, col = cell_index // gw, cell_index % gw
  boxes = jnp.stack([row * th, col * tw, (row + 1) * th, (col + 1) * tw], axis=-1)
  return tiles, boxes


class GatedAttention(nn.Module):
  """a = softmax_k(w [sigmoid(U h_k) * tanh(V h_k)]), z = sum_k a_k h_k (no biases)."""
  hidden: int = 128
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h):
    gate = nn.sigmoid(Linear(self.hidden, use_bias=False, dtype=self.dtype, name='U')(h))
    value = jnp.tanh(Linear(self.hidden, use_bias=False, dtype=self.dtype, name='V')(h))
    scores = Linear(1, use_bias=False, dtype=self.dtype, name='w')(gate * value)[..., 0]
    attention = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
    return jnp.einsum('bk,bkc->bc', attention, h.astype(jnp.float32)), attention


class DCG(nn.Module):
  """Dual-granularity guidance classifier.

  Returns a dict: `logits` (fused), `logits_global`, `logits_local` (B, K); `saliency` (B, h, w, K);
  `roi_boxes` (B, k, 4) pixel boxes; `attention` (B, k).
  """
  num_classes: int
  backbone: str = 'resnet50'
  small_stem: bool = False
  width: int = 64
  num_rois: int = 6
  top_t_percent: float = 1.0
  attention_dim: int = 128
  crop_first_channel: bool = False
  dtype: Any = jnp.float32
  cpu_tuning: bool = False  # models/conv.py's XLA:CPU forms.
  remat: str = 'none'  # Train-mode trunks: resnet.ResNet.remat.

  @nn.compact
  def __call__(self, images, train: bool = False):
    trunk = dict(small_stem=self.small_stem, width=self.width, dtype=self.dtype,
                 cpu_tuning=self.cpu_tuning, remat=self.remat)
    fmap = resnet.backbone(self.backbone, output='map', name='global_net', **trunk)(images, train)
    saliency = conv.conv(self.num_classes, 1, cpu_tuning=self.cpu_tuning,
                         kernel_init=torch_kernel_init, dtype=self.dtype,
                         name='saliency_conv')(fmap)
    saliency = saliency.astype(jnp.float32)
    logits_global = top_t_percent_mean(saliency, self.top_t_percent)

    grid = saliency.shape[1:3]
    num_rois = min(self.num_rois, grid[0] * grid[1])
    source = jnp.repeat(images[..., :1], 3, axis=-1) if self.crop_first_channel else images
    tiles, boxes = crop_tiles(source, select_rois(saliency, num_rois), grid)
    b, k = tiles.shape[:2]
    local = resnet.backbone(self.backbone, output='pooled', name='local_net', **trunk)(
        tiles.reshape(b * k, *tiles.shape[2:]), train)
    pooled, attention = GatedAttention(self.attention_dim, self.dtype, name='attention')(
        local.reshape(b, k, -1))
    logits_local = Linear(self.num_classes, use_bias=False, name='local_head')(pooled)
    return {
        'logits': 0.5 * (logits_global + logits_local),
        'logits_global': logits_global,
        'logits_local': logits_local,
        'saliency': saliency,
        'roi_boxes': boxes,
        'attention': attention,
    }


def priors(outputs: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The diffusion priors (y_hat, y_hat_g, y_hat_l) = softmax of the fused, global, local logits.

  y_hat is softmax(0.5 (z_g + z_l)), as the official trainer computes it: logits averaged first.
  """
  return tuple(jax.nn.softmax(outputs[k].astype(jnp.float32), axis=-1)
               for k in ('logits', 'logits_global', 'logits_local'))
