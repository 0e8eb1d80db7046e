"""ImageNet normalisation, on device: the input pipeline ships uint8 to keep host copies small."""

import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, on the 0..1 scale.
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images, dtype=jnp.float32):
  """uint8 [..., 3] in 0..255 -> (x / 255 - mean) / std, as torchvision's Normalize.

  Args:
    images: uint8 (or any numeric) array with RGB last.
    dtype: Output dtype.

  Returns:
    The normalised images, `dtype`.
  """
  x = jnp.asarray(images).astype(jnp.float32) / 255.0
  x = (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)
  return x.astype(dtype)
