"""ISIC 2018 Task 3 / HAM10000: DiffMIC's split, a lesion-grouped split, the official test set.

The manual directory is either a prepared copy (`labels.csv` with `image_id,file,label,lesion_id`
and optionally `diffmic_split`) or the original HAM10000 download (`HAM10000_metadata.csv` with
`lesion_id,image_id,dx` and the `<image_id>.jpg` files anywhere below the folder).
Class order is DiffMIC's: MEL, NV, BCC, AKIEC, BKL, DF, VASC.

Schemes:
  diffmic: DiffMIC's published per-image train/test split (the `diffmic_split` column when the
    folder holds a subset, else the packaged lists, which then must all have an image);
    `validation` is carved from train by lesion (15% of train, no lesion on both sides).
  grouped: lesion-grouped 70/15/15 train/validation/test over every image in the folder; the
    honest split for reporting, since DiffMIC's split puts one lesion on both sides.
  official: every image in the folder (all of HAM10000 = the ISIC 2018 Task 3 training set) split
    by lesion into train/validation (85/15), and the official ISIC 2018 Task 3 test set (1,512
    images) as `test`. That needs, inside the manual directory, the images of
    `ISIC2018_Task3_Test_Input.zip` (folder `ISIC2018_Task3_Test_Input/` or
    `ISIC2018_Task3_Test_Images/`) and `ISIC2018_Task3_Test_GroundTruth.csv` (at the top or in
    `ISIC2018_Task3_Test_GroundTruth/`, as its zip unpacks): columns `image` and one-hot
    MEL,NV,BCC,AKIEC,BKL,DF,VASC. The test images are stored with the same crop and resize.
"""

import os

from diffmic_jax.data.examples import DataError, Example, Splits, group_split, package_file
from diffmic_jax.data.examples import parse_label, read_csv, split_list

NUM_CLASSES = 7
CLASS_NAMES = ('MEL', 'NV', 'BCC', 'AKIEC', 'BKL', 'DF', 'VASC')
SCHEMES = ('diffmic', 'grouped', 'official')
VALIDATION_FRACTION = 0.15  # Of the training images, carved by lesion (diffmic, official).
TEST_IMAGE_DIRS = ('ISIC2018_Task3_Test_Input', 'ISIC2018_Task3_Test_Images')
TEST_LABELS = 'ISIC2018_Task3_Test_GroundTruth.csv'
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


def _one_hot_label(row: dict[str, str], where: str) -> int:
  try:
    values = [float(row[name]) for name in CLASS_NAMES]
  except ValueError:
    values = None
  if values is None or sorted(values) != [0.0] * (NUM_CLASSES - 1) + [1.0]:
    raise DataError(f'{where}: expected one-hot {",".join(CLASS_NAMES)} (one 1, six 0), got '
                    f'{[row[name] for name in CLASS_NAMES]}')
  return values.index(1.0)


def _official_test(manual_dir: str) -> list[Example]:
  """The ISIC 2018 Task 3 test set, or a DataError naming what is missing."""
  labels = next((p for p in (os.path.join(manual_dir, TEST_LABELS),
                             os.path.join(manual_dir, TEST_LABELS[:-4], TEST_LABELS))
                 if os.path.isfile(p)), None)
  image_dir = next((os.path.join(manual_dir, d) for d in TEST_IMAGE_DIRS
                    if os.path.isdir(os.path.join(manual_dir, d))), None)
  missing = ([] if labels else [f'{TEST_LABELS} (or {TEST_LABELS[:-4]}/{TEST_LABELS})']) + (
      [] if image_dir else [f'{TEST_IMAGE_DIRS[0]}/ (or {TEST_IMAGE_DIRS[1]}/)'])
  if missing:
    raise DataError(
        f'{manual_dir}: builder_config official needs the ISIC 2018 Task 3 test set; missing '
        f'{" and ".join(missing)}. Unpack ISIC2018_Task3_Test_Input.zip and '
        'ISIC2018_Task3_Test_GroundTruth.zip there, or use builder_config diffmic | grouped')
  images = _find_images(image_dir)
  test = []
  for line, row in read_csv(labels, ['image', *CLASS_NAMES]):
    where = f'{labels}:{line}'
    test.append(Example(key=row['image'], label=_one_hot_label(row, where), where=where,
                        path=images.get(row['image'],
                                        os.path.join(image_dir, row['image'] + '.jpg'))))
  return test


def resolve(manual_dir: str, scheme: str, num_classes: int = NUM_CLASSES) -> Splits:
  """Resolves the ISIC 2018 splits.

  Args:
    manual_dir: Folder with the images and labels (see the module docstring).
    scheme: 'diffmic', 'grouped' or 'official'.
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
  if scheme == 'official':
    test = _official_test(manual_dir)
    carved = group_split(examples, [1 - VALIDATION_FRACTION, VALIDATION_FRACTION],
                         ['train', 'validation'])
    return {**carved, 'test': test}
  raise DataError(f'isic2018: unknown builder_config {scheme!r}; expected one of {SCHEMES}')
