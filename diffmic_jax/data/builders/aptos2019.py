"""APTOS 2019 Blindness Detection: resolve DiffMIC's split and the duplicate-aware split.

The manual directory is either a prepared copy (`labels.csv` with `image_id,file,label`) or the
Kaggle download (`train.csv` with `id_code,diagnosis` and `train_images/<id_code>.png`), or any
folder of `<id_code>.{png,jpg}` next to such a `train.csv`. Labels come from the manual directory
(Kaggle's ground truth); the packaged lists only say which id goes where.

Schemes:
  diffmic: DiffMIC's published train/test lists; `validation` is the published 352-id list
    carved from DiffMIC's train (`aptos-leakage-audit` R1), `train` is the remaining 2,212.
  grouped: the duplicate-aware 70/15/15 split (no duplicate group spans two parts).
"""

import os

from diffmic_jax.data.examples import DataError, Example, Splits, package_file, parse_label
from diffmic_jax.data.examples import read_csv, split_list

NUM_CLASSES = 5
CLASS_NAMES = ('none', 'mild', 'moderate', 'severe', 'proliferative')
SCHEMES = ('diffmic', 'grouped')
_EXTENSIONS = ('.png', '.jpg', '.jpeg')


def _index(manual_dir: str) -> dict[str, tuple[str, int, str]]:
  """Maps id_code -> (image path, label, where) from the manual directory's CSV."""
  ours, kaggle = os.path.join(manual_dir, 'labels.csv'), os.path.join(manual_dir, 'train.csv')
  index = {}
  if os.path.isfile(ours):
    for line, row in read_csv(ours, ['image_id', 'file', 'label']):
      where = f'{ours}:{line}'
      index[row['image_id']] = (os.path.join(manual_dir, row['file']),
                                parse_label(row['label'], where), where)
  elif os.path.isfile(kaggle):
    image_dir = os.path.join(manual_dir, 'train_images')
    image_dir = image_dir if os.path.isdir(image_dir) else manual_dir
    for line, row in read_csv(kaggle, ['id_code', 'diagnosis']):
      where = f'{kaggle}:{line}'
      candidates = [os.path.join(image_dir, row['id_code'] + e) for e in _EXTENSIONS]
      path = next((p for p in candidates if os.path.isfile(p)), candidates[0])
      index[row['id_code']] = (path, parse_label(row['diagnosis'], where), where)
  else:
    raise DataError(f'{manual_dir}: no labels.csv (image_id,file,label) or Kaggle train.csv '
                    '(id_code,diagnosis) found')
  return index


def _from_list(path: str, id_column: str, index) -> list[Example]:
  out = []
  for key, _, where in split_list(path, id_column):
    if key in index:
      image, label, _ = index[key]
      out.append(Example(key=key, label=label, where=where, path=image))
    else:
      out.append(Example(key=key, label=0, where=where, path=None))  # Fails: no image.
  return out


def resolve(manual_dir: str, scheme: str, num_classes: int = NUM_CLASSES) -> Splits:
  """Resolves the APTOS splits.

  Args:
    manual_dir: Folder with the images and labels (see the module docstring).
    scheme: 'diffmic' or 'grouped'.
    num_classes: Unused (always 5); kept for a common signature.

  Returns:
    `{'train', 'validation', 'test'}` -> examples, unchecked (see `check_splits`).
  """
  del num_classes
  index = _index(manual_dir)
  if scheme == 'diffmic':
    val_ids = {k for k, _, _ in split_list(package_file('splits', 'aptos_r1_val_ids.csv'), 'id')}
    train_full = _from_list(package_file('splits', 'aptos_train.csv'), 'image_id', index)
    return {
        'train': [ex for ex in train_full if ex.key not in val_ids],
        'validation': [ex for ex in train_full if ex.key in val_ids],
        'test': _from_list(package_file('splits', 'aptos_test.csv'), 'image_id', index),
    }
  if scheme == 'grouped':
    return {split: _from_list(package_file('splits', f'aptos_groupaware_{part}_ids.csv'), 'id',
                              index)
            for split, part in (('train', 'train'), ('validation', 'val'), ('test', 'test'))}
  raise DataError(f'aptos2019: unknown builder_config {scheme!r}; expected one of {SCHEMES}')
