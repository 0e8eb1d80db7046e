"""Any labelled image folder (placental maturity, private sets): images plus a CSV.

The manual directory holds `labels.csv` with columns `file,label` and optionally `split`
(train | validation | val | test) and `group` (e.g. patient id). `file` is relative to the
folder. Without a `split` column the images are split 70/15/15 by group (by image without a
`group` column), deterministically. Labels are integers in [0, K); K is the config's
`num_classes`, or the largest label + 1 when that is None.
"""

import os

from diffmic_jax.data.examples import DataError, Example, Splits, group_split, parse_label
from diffmic_jax.data.examples import read_csv

NUM_CLASSES = None  # The labels decide (or the config's num_classes).
CLASS_NAMES = None
SCHEMES = ('default',)
CSV_NAME = 'labels.csv'
_SPLIT_NAMES = {'train': 'train', 'validation': 'validation', 'val': 'validation',
                'valid': 'validation', 'test': 'test'}


def resolve(manual_dir: str, scheme: str = 'default', num_classes: int = -1) -> Splits:
  """Resolves the splits of a labelled image folder.

  Args:
    manual_dir: Folder with `labels.csv` and the images.
    scheme: Unused ('default'); the CSV decides.
    num_classes: Unused here (checked by `check_splits`).

  Returns:
    `{'train', 'validation', 'test'}` -> examples (one absent from a `split` column is empty,
    which `check_splits` refuses), unchecked.
  """
  del scheme, num_classes
  path = os.path.join(manual_dir, CSV_NAME)
  rows = read_csv(path, ['file', 'label'])
  has_split = any('split' in row for _, row in rows[:1])
  examples, sides = [], []
  for line, row in rows:
    where = f'{path}:{line}'
    if not row['file']:
      raise DataError(f'{where}: empty file name')
    examples.append(Example(key=row['file'], label=parse_label(row['label'], where), where=where,
                            path=os.path.join(manual_dir, row['file']),
                            group=row.get('group', '')))
    if has_split:
      side = _SPLIT_NAMES.get(row['split'].lower())
      if side is None:
        raise DataError(f'{where}: split {row["split"]!r} is not one of {sorted(_SPLIT_NAMES)}')
      sides.append(side)
  if not examples:
    raise DataError(f'{path}: no rows')
  if not has_split:
    return group_split(examples, [0.7, 0.15, 0.15], ['train', 'validation', 'test'])
  splits = {'train': [], 'validation': [], 'test': []}  # An absent one is an empty split.
  for ex, side in zip(examples, sides):
    splits.setdefault(side, []).append(ex)
  return splits
