"""Per-example read-time transforms: decode, and DiffMIC's training augmentation.

The official recipe (dataloader/loading.py) after the stored crop/resize: horizontal flip p=0.5,
vertical flip p=0.5 (fundus only), rotation U(-d, d) degrees with PIL bilinear and black fill.
PIL's `rotate(..., BILINEAR, fillcolor=0)` is what torchvision's RandomRotation calls, so the
pixels match the official code. All randomness comes from grain's per-element `rng`, so a seed
fixes every augmentation and a restored iterator repeats it.
"""

import dataclasses

import grain
import numpy as np
from PIL import Image

from diffmic_jax.data.preprocess import decode


@dataclasses.dataclass(frozen=True)
class Lookup(grain.transforms.Map):
  """Dataset index -> stored record (image still encoded)."""
  source: object

  def map(self, index):
    return self.source[int(index)]


@dataclasses.dataclass(frozen=True)
class DecodeAugment(grain.transforms.RandomMap):
  """Stored record -> {'image': uint8 [s, s, 3], 'label': int32}, augmented when asked.

  Attributes:
    image_size: Output side s (resized at read time when the stored size differs).
    horizontal_flip: Flip left-right with p = 0.5.
    vertical_flip: Flip up-down with p = 0.5.
    rotation_degrees: Rotate by U(-d, d) degrees, bilinear, zero fill; 0 disables.
  """
  image_size: int
  horizontal_flip: bool = False
  vertical_flip: bool = False
  rotation_degrees: float = 0.0

  def random_map(self, record, rng: np.random.Generator):
    image = decode(record['image'], self.image_size)
    # Draw every random number whatever the switches say, so turning one op off does not
    # change the others' draws.
    h_flip, v_flip = rng.random() < 0.5, rng.random() < 0.5
    angle = rng.uniform(-self.rotation_degrees, self.rotation_degrees)
    if self.horizontal_flip and h_flip:
      image = image[:, ::-1]
    if self.vertical_flip and v_flip:
      image = image[::-1]
    if self.rotation_degrees:
      image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).rotate(
          angle, resample=Image.BILINEAR, fillcolor=(0, 0, 0)))
    return {'image': np.ascontiguousarray(image), 'label': np.int32(record['label'])}


@dataclasses.dataclass(frozen=True)
class BalancedPick(grain.transforms.RandomMap):
  """Ignores its input and draws a class uniformly, then an example of it uniformly.

  Attributes:
    by_class: One index array per class present (empty classes are left out).
  """
  by_class: tuple

  def random_map(self, _, rng: np.random.Generator):
    members = self.by_class[rng.integers(len(self.by_class))]
    return int(members[rng.integers(len(members))])


class EvalSource:
  """Random access over one process's padded evaluation positions.

  Position i of this process is global example `(i // b) * b * P + p * b + i % b` (batch j of
  every process covers a contiguous block of b * P examples); positions past the end are padding
  with `mask` False and `index` -1. Every process has the same number of positions.
  """

  def __init__(self, source, image_size: int, batch_size: int, process_index: int,
               process_count: int):
    self._source, self._size = source, image_size
    self._b, self._p, self._count = batch_size, process_index, process_count
    n = len(source)
    self.num_batches = max(1, -(-n // (batch_size * process_count)))
    self._n = n

  def __len__(self) -> int:
    return self.num_batches * self._b

  def __repr__(self) -> str:
    return (f'EvalSource({self._source!r}, image_size={self._size}, batch_size={self._b}, '
            f'process={self._p}/{self._count})')

  def __getitem__(self, i: int):
    j, k = divmod(int(i), self._b)
    index = j * self._b * self._count + self._p * self._b + k
    if index >= self._n:
      return {'image': np.zeros((self._size, self._size, 3), np.uint8), 'label': np.int32(0),
              'mask': False, 'index': np.int32(-1)}
    record = self._source[index]
    return {'image': decode(record['image'], self._size), 'label': np.int32(record['label']),
            'mask': True, 'index': np.int32(index)}
