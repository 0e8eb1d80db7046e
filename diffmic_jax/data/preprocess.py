"""DiffMIC's deterministic preprocessing, done once at build time, and the decode at read time.

DiffMIC applies CropCenterSquare -> Resize(224) (PIL bilinear) before every random op, so storing
the cropped image resized the same way, losslessly (`encoding='png'`, `resize='bilinear'`, the
defaults), gives the pixels the official loader computes each epoch, and training never decodes a
multi-megapixel photo. JPEG (quality 95) and bicubic are the smaller, not identical, option. Images
already square at the stored size and in JPEG are kept byte for byte (no second lossy encode).
Grayscale, 16-bit, palette and transparent images are brought to 8-bit RGB by `to_rgb`, scaled,
not clipped.
"""

import io

import numpy as np
from PIL import Image

from diffmic_jax.data.examples import DataError, Example

JPEG_QUALITY = 95


def center_square(image: Image.Image) -> Image.Image:
  """Centre square of side min(H, W) (DiffMIC's CropCenterSquare)."""
  w, h = image.size
  side = min(w, h)
  left, top = (w - side) // 2, (h - side) // 2
  return image.crop((left, top, left + side, top + side))


def to_rgb(image: Image.Image) -> Image.Image:
  """8-bit RGB of any image PIL reads, its values scaled, never clipped.

  16-bit grayscale, common in medical exports, is scaled from 0..65535 to 0..255: PIL's own `convert('RGB')` clips it at 255, which saturates almost every pixel.
  Float images are taken as 0..1. Transparency (RGBA, LA, a palette's transparent colour) is laid
  over black, the background of fundus and dermoscopy photos, instead of showing whatever colour
  the hidden pixels happen to hold.
  """
  if image.mode in ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I', 'F'):
    values = np.asarray(image, np.float64)
    if image.mode == 'F':
      scale = 255.0
    elif values.max() > 65535:
      scale = 255.0 / values.max()  # Beyond 16 bits there is no usual range: the image's own.
    else:
      scale = 255.0 / 65535.0
    gray = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, 'L').convert('RGB')
  if image.mode == 'P' and 'transparency' in image.info:
    image = image.convert('RGBA')
  if image.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La'):
    rgba = image.convert('RGBA')
    black = Image.new('RGBA', rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(black, rgba).convert('RGB')
  return image.convert('RGB')


def _open(ex: Example) -> tuple[Image.Image, bytes | None]:
  if ex.pixels is not None:
    pixels = np.asarray(ex.pixels, np.uint8)
    return Image.fromarray(pixels).convert('RGB'), None
  try:
    with open(ex.path, 'rb') as f:
      raw = f.read()
    image = Image.open(io.BytesIO(raw))
    image.load()  # Decodes fully: a truncated or corrupt file fails here, not in training.
  except FileNotFoundError as e:
    raise DataError(f'{ex.where}: id {ex.key!r} has no image (missing file {ex.path})') from e
  except Exception as e:  # PIL raises many types for bad files.
    raise DataError(f'{ex.where}: cannot decode image {ex.path} for id {ex.key!r}: '
                    f'{type(e).__name__}: {e}') from e
  return image, raw


def readable(ex: Example) -> str | None:
  """None if the example's image decodes, else the message `encode_example` would raise."""
  try:
    _open(ex)
  except DataError as e:
    return str(e)
  return None


def encode_example(ex: Example, stored_size: int | None, encoding: str = 'jpeg',
                   resize: str = 'bicubic') -> bytes:
  """Reads, crops, resizes and encodes one image.

  Args:
    ex: The example (file or pixels).
    stored_size: Side of the stored square image; None keeps the size (must be square).
    encoding: 'jpeg' (quality 95) or 'png' (lossless).
    resize: 'bilinear' (as the official loader) or 'bicubic'.

  Returns:
    Encoded image bytes, RGB, `stored_size` square.
  """
  image, raw = _open(ex)
  keep = (raw is not None and image.format == 'JPEG' and encoding == 'jpeg'
          and image.mode == 'RGB' and image.size[0] == image.size[1]
          and (stored_size is None or image.size[0] == stored_size))
  if keep:
    return raw
  image = center_square(to_rgb(image))
  if stored_size is not None and image.size[0] != stored_size:
    image = image.resize((stored_size, stored_size),
                         {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}[resize])
  out = io.BytesIO()
  if encoding == 'png':
    image.save(out, 'PNG')
  else:
    image.save(out, 'JPEG', quality=JPEG_QUALITY)
  return out.getvalue()


def decode(data: bytes, size: int) -> np.ndarray:
  """Decodes stored bytes to uint8 [size, size, 3], resizing if the stored size differs.

  JPEG draft mode lets the decoder downscale in the DCT domain, which roughly doubles read
  throughput when the stored size is at least twice the model size.
  """
  image = Image.open(io.BytesIO(data))
  if image.size != (size, size):
    image.draft('RGB', (size, size))
  image = image.convert('RGB')
  if image.size != (size, size):
    image = image.resize((size, size), Image.BILINEAR)
  return np.asarray(image, np.uint8)
