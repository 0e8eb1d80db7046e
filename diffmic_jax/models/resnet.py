"""ResNet-18/50 in Flax Linen, NHWC, laid out so torchvision weights map one to one.

Submodule names follow torchvision (`conv1`, `bn1`, `layer1_0.conv1`, `layer1_0.downsample_conv`,
`fc`, ...) and the padding is torchvision's explicit padding, so a converted ImageNet checkpoint gives
the same activations as in PyTorch. Parameter counts equal torchvision's: ResNet18 11,689,512 and
ResNet50 25,557,032 with a 1000-way head.

The DCG needs the last feature map (for its saliency conv) and the epsilon network needs the pooled
vector, so `output` picks what the trunk returns instead of duplicating the trunk per use.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
from jax import ad_checkpoint
import jax.numpy as jnp

from diffmic_jax.models import batch_norm, conv


# What a rematerialised block keeps for its backward pass (ResNet.remat).
REMAT_POLICIES = {
    # Nothing: each block's forward runs again in the backward pass.
    'blocks': None,
    # The convolutions' outputs: only BatchNorm, ReLU and the residual add run again.
    'conv_outputs': jax.checkpoint_policies.save_only_these_names('conv_output'),
}
REMAT_CHOICES = ('none', *REMAT_POLICIES)


def _conv_output(y):
  return ad_checkpoint.checkpoint_name(y, 'conv_output')


def _batch_norm(train: bool, dtype: Any, name: str) -> batch_norm.BatchNorm:
  # torchvision BatchNorm2d: momentum 0.1 (Flax's 0.9), eps 1e-5, torch's variance estimates.
  return batch_norm.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                              dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34)."""
  features: int
  stride: int = 1
  dtype: Any = jnp.float32
  cpu_tuning: bool = False  # conv.py's XLA:CPU forms instead of nn.Conv.
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool):
    y = _conv_output(conv.conv(self.features, 3, self.stride, cpu_tuning=self.cpu_tuning,
                               dtype=self.dtype, name='conv1')(x))
    y = nn.relu(_batch_norm(train, self.dtype, 'bn1')(y))
    y = _conv_output(conv.conv(self.features, 3, 1, cpu_tuning=self.cpu_tuning, dtype=self.dtype,
                               name='conv2')(y))
    y = _batch_norm(train, self.dtype, 'bn2')(y)
    return nn.relu(y + _shortcut(self, x, train))


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided, as torchvision v1.5) -> 1x1 x4 (ResNet-50)."""
  features: int
  stride: int = 1
  dtype: Any = jnp.float32
  cpu_tuning: bool = False
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    y = _conv_output(conv.conv(self.features, 1, 1, cpu_tuning=self.cpu_tuning, dtype=self.dtype,
                               name='conv1')(x))
    y = nn.relu(_batch_norm(train, self.dtype, 'bn1')(y))
    y = _conv_output(conv.conv(self.features, 3, self.stride, cpu_tuning=self.cpu_tuning,
                               dtype=self.dtype, name='conv2')(y))
    y = nn.relu(_batch_norm(train, self.dtype, 'bn2')(y))
    y = _conv_output(conv.conv(self.features * 4, 1, 1, cpu_tuning=self.cpu_tuning,
                               dtype=self.dtype, name='conv3')(y))
    y = _batch_norm(train, self.dtype, 'bn3')(y)
    return nn.relu(y + _shortcut(self, x, train))


def _shortcut(block: nn.Module, x, train: bool):
  """Identity, or torchvision's 1x1 strided conv + BN when the shape changes."""
  out_features = block.features * block.expansion
  if block.stride == 1 and x.shape[-1] == out_features:
    return x
  y = _conv_output(conv.conv(out_features, 1, block.stride, cpu_tuning=block.cpu_tuning,
                             dtype=block.dtype, name='downsample_conv')(x))
  return _batch_norm(train, block.dtype, 'downsample_bn')(y)


class ResNet(nn.Module):
  """ResNet trunk with a choice of output.

  Attributes:
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet18.
    block_cls: BasicBlock or Bottleneck.
    output: 'map' (B, h, w, C) last feature map; 'pooled' (B, C) global average;
      'logits' (B, num_classes) through the `fc` head.
    num_classes: head width when output == 'logits'.
    small_stem: 3x3 stride-1 stem without max-pool, for 28-64 px inputs (overall stride 8, not 32).
    cpu_tuning: models/conv.py's XLA:CPU forms of the convolutions and max-pool.
    remat: 'none', or rematerialise each residual block in the backward pass, keeping what
      REMAT_POLICIES names: the same values and gradients for less memory and more compute.
  """
  stage_sizes: Sequence[int]
  block_cls: Any
  output: str = 'pooled'
  num_classes: int = 1000
  small_stem: bool = False
  width: int = 64  # Stem / first-stage channels; torchvision's 64. Tests shrink it.
  dtype: Any = jnp.float32
  cpu_tuning: bool = False
  remat: str = 'none'

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.output not in ('map', 'pooled', 'logits'):
      raise ValueError(f"ResNet.output must be 'map', 'pooled' or 'logits', got {self.output!r}")
    if self.remat not in REMAT_CHOICES:
      raise ValueError(f'ResNet.remat must be one of {REMAT_CHOICES}, got {self.remat!r}')
    block_cls = self.block_cls
    if self.remat != 'none' and train:  # Eval passes keep nothing for a backward pass.
      block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[self.remat], static_argnums=(2,))
    x = x.astype(self.dtype)
    if self.small_stem:
      x = conv.conv(self.width, 3, 1, cpu_tuning=self.cpu_tuning, dtype=self.dtype, name='conv1')(x)
      x = nn.relu(_batch_norm(train, self.dtype, 'bn1')(x))
    else:
      x = conv.conv(self.width, 7, 2, cpu_tuning=self.cpu_tuning, dtype=self.dtype, name='conv1')(x)
      x = nn.relu(_batch_norm(train, self.dtype, 'bn1')(x))
      x = conv.max_pool_3x3_s2(x, self.cpu_tuning)
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        stride = 2 if i > 0 and j == 0 else 1
        x = block_cls(self.width * 2**i, stride, self.dtype, self.cpu_tuning,
                      name=f'layer{i + 1}_{j}')(x, train)
    if self.output == 'map':
      return x
    x = jnp.mean(x, axis=(1, 2))
    if self.output == 'pooled':
      return x
    return nn.Dense(self.num_classes, dtype=self.dtype, name='fc')(x)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
# One block per stage: the same code paths at a fraction of the cost, for tests only.
ResNetTiny = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), block_cls=BasicBlock)

BACKBONES = {'resnet18': ResNet18, 'resnet50': ResNet50, 'resnet_tiny': ResNetTiny}


def backbone(arch: str, **kwargs) -> ResNet:
  """Looks a trunk up by config name, naming the choices on a typo."""
  if arch not in BACKBONES:
    raise ValueError(f'unknown backbone {arch!r}; choose one of {sorted(BACKBONES)}')
  return BACKBONES[arch](**kwargs)


def feature_width(arch: str, width: int = 64) -> int:
  """Channels of the trunk's last stage (512 for ResNet18, 2048 for ResNet50)."""
  return 8 * width * backbone(arch).block_cls.expansion
