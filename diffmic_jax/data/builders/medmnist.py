"""MedMNIST `.npz` files (RetinaMNIST, BreastMNIST, ...): official train/val/test as they are.

The manual directory is the `.npz` file itself or a folder holding `<builder_config>.npz`
(e.g. `retinamnist.npz`). Images are arrays, so the builder encodes them losslessly (PNG) at
their own size; `data.stored_size` does not apply.
"""

import os

import numpy as np

from diffmic_jax.data.examples import DataError, Example, Splits

NUM_CLASSES = None  # Per file: see KNOWN_CLASSES.
CLASS_NAMES = None
SCHEMES = ('retinamnist', 'breastmnist', 'pathmnist', 'dermamnist', 'bloodmnist', 'octmnist',
           'pneumoniamnist', 'organamnist', 'organcmnist', 'organsmnist', 'tissuemnist')
KNOWN_CLASSES = {'retinamnist': 5, 'breastmnist': 2, 'pathmnist': 9, 'dermamnist': 7,
                 'bloodmnist': 8, 'octmnist': 4, 'pneumoniamnist': 2, 'organamnist': 11,
                 'organcmnist': 11, 'organsmnist': 11, 'tissuemnist': 8}
_PARTS = (('train', 'train'), ('validation', 'val'), ('test', 'test'))


def npz_path(manual_dir: str, scheme: str) -> str:
  """The `.npz` file a (manual_dir, builder_config) pair names."""
  if manual_dir.endswith('.npz'):
    return manual_dir
  return os.path.join(manual_dir, f'{scheme}.npz')


def resolve(manual_dir: str, scheme: str, num_classes: int = -1) -> Splits:
  """Resolves the official MedMNIST splits.

  Args:
    manual_dir: The `.npz` file, or a folder holding `<scheme>.npz`.
    scheme: The MedMNIST subset name, e.g. 'retinamnist'.
    num_classes: Unused here (checked by `check_splits`).

  Returns:
    `{'train', 'validation', 'test'}` -> examples carrying their pixels, unchecked.
  """
  del num_classes
  path = npz_path(manual_dir, scheme)
  if not os.path.isfile(path):
    raise DataError(f'{path}: MedMNIST file not found')
  with np.load(path) as data:
    missing = [f'{p}_{k}' for _, p in _PARTS for k in ('images', 'labels')
               if f'{p}_{k}' not in data]
    if missing:
      raise DataError(f'{path}: missing arrays {missing}; found {sorted(data.keys())}')
    splits = {}
    for split, part in _PARTS:
      images, labels = data[f'{part}_images'], data[f'{part}_labels']
      if labels.ndim > 1 and labels.shape[-1] != 1:
        raise DataError(f'{path}: {part}_labels has shape {labels.shape}; only single-label '
                        'sets are supported')
      labels = labels.reshape(-1)
      splits[split] = [Example(key=f'{part}/{i}', label=int(labels[i]),
                               where=f'{path}:{part}_labels[{i}]', pixels=images[i])
                       for i in range(len(labels))]
  return splits
