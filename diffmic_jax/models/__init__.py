"""Flax Linen modules: ResNet trunks, the DCG guidance classifier, the epsilon network."""

from diffmic_jax.models.dcg import DCG, priors
from diffmic_jax.models.eps_net import EpsilonNet, head_fn
from diffmic_jax.models.resnet import ResNet, ResNet18, ResNet50, backbone, feature_width
