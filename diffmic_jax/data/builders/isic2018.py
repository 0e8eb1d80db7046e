"""ISIC 2018 Task 3 / HAM10000: resolve DiffMIC's split and a lesion-grouped split.

The manual directory is either our 224 px copy (`labels.csv` with `image_id,file,label,lesion_id`
and optionally `diffmic_split`) or the original HAM10000 download (`HAM10000_metadata.csv` with
`lesion_id,image_id,dx` and the `<image_id>.jpg` files anywhere below the folder).
Class order is DiffMIC's: MEL, NV, BCC, AKIEC, BKL, DF, VASC.

Schemes:
  diffmic: DiffMIC's published per-image train/test split (the `diffmic_split` column when the
    folder holds a subset, else the packaged lists, which then must all have an image);
    `validation` is carved from train by lesion (15% of train, no lesion on both sides).
  grouped: lesion-grouped 70/15/15 train/validation/test over every image in the folder; the
    honest split for reporting, since DiffMIC's split puts one lesion on both sides.
"""

import os

from diffmic_jax.data.examples import DataError, Example, Splits, group_split, package_file
from diffmic_jax.data.examples import parse_label, read_csv, split_list

NUM_CLASSES = 7
CLASS_NAMES = ('MEL', 'NV', 'BCC', 'AKIEC', 'BKL', 'DF', 'VASC')
SCHEMES = ('diffmic', 'grouped')
VALIDATION_FRACTION = 0.15  # Of DiffMIC's train split, carved by lesion.
_DX = {name.lower(): i for i, name in enumerate(CLASS_NAMES)}


def _find_images(manual_dir: str) -> dict[str, str]:
  found = {}
  for root, _, files in os.walk(manual_dir):
    for f in files:
      stem, ext = os.path.splitext(f)
      if ext.lower() in ('.jpg', '.jpeg', '.png'):
        found.setdefault(stem, os.path.join(root, f))
  return found


def _index(manual_dir: str) -> tuple[list[Example], dict[str, str]]:
  """All examples of the folder and, when known, each id's DiffMIC side."""
  ours = os.path.join(manual_dir, 'labels.csv')
  meta = os.path.join(manual_dir, 'HAM10000_metadata.csv')
  examples, sides = [], {}
  if os.path.isfile(ours):
    for line, row in read_csv(ours, ['image_id', 'file', 'label', 'lesion_id']):
      where = f'{ours}:{line}'
      examples.append(Example(key=row['image_id'], label=parse_label(row['label'], where),
                              where=where, path=os.path.join(manual_dir, row['file']),
                              group=row['lesion_id']))
      if row.get('diffmic_split'):
        sides[row['image_id']] = row['diffmic_split']
  elif os.path.isfile(meta):
    images = _find_images(manual_dir)
    for line, row in read_csv(meta, ['lesion_id', 'image_id', 'dx']):
      where = f'{meta}:{line}'
      if row['dx'].lower() not in _DX:
        raise DataError(f'{where}: unknown dx {row["dx"]!r}; expected one of {sorted(_DX)}')
      examples.append(Example(key=row['image_id'], label=_DX[row['dx'].lower()], where=where,
                              path=images.get(row['image_id'], os.path.join(
                                  manual_dir, row['image_id'] + '.jpg')),
                              group=row['lesion_id']))
  else:
    raise DataError(f'{manual_dir}: no labels.csv (image_id,file,label,lesion_id) or '
                    'HAM10000_metadata.csv (lesion_id,image_id,dx) found')
  return examples, sides


def _diffmic_lists(examples: list[Example]) -> tuple[list[Example], list[Example]]:
  by_id = {ex.key: ex for ex in examples}
  parts = []
  for name in ('isic2018_train.csv', 'isic2018_test.csv'):
    part = []
    for key, _, where in split_list(package_file('splits', name), 'image_id'):
      ex = by_id.get(key)
      part.append(ex if ex is not None else Example(key=key, label=0, where=where, path=None))
    parts.append(part)
  return parts[0], parts[1]


def resolve(manual_dir: str, scheme: str, num_classes: int = NUM_CLASSES) -> Splits:
  """Resolves the ISIC 2018 splits.

  Args:
    manual_dir: Folder with the images and labels (see the module docstring).
    scheme: 'diffmic' or 'grouped'.
    num_classes: Unused (always 7); kept for a common signature.

  Returns:
    `{'train', 'validation', 'test'}` -> examples, unchecked (see `check_splits`).
  """
  del num_classes
  examples, sides = _index(manual_dir)
  if scheme == 'diffmic':
    if sides:
      train = [ex for ex in examples if sides.get(ex.key) == 'train']
      test = [ex for ex in examples if sides.get(ex.key) == 'test']
    else:
      train, test = _diffmic_lists(examples)
    carved = group_split(train, [1 - VALIDATION_FRACTION, VALIDATION_FRACTION],
                         ['train', 'validation'])
    return {**carved, 'test': test}
  if scheme == 'grouped':
    return group_split(examples, [0.7, 0.15, 0.15], ['train', 'validation', 'test'])
  raise DataError(f'isic2018: unknown builder_config {scheme!r}; expected one of {SCHEMES}')
