"""What a build was made from: the source record stored beside it, and how two records differ.

A build's source is its manual directory and the splits resolved from it. The record lists, per
split and in order, each example's id, label and image file with its size and modification time
(array-backed examples: a hash of their pixels), plus the build options that change what is
written. Its digest decides whether a build is still current: a relabelled row, an added,
removed or re-saved image, or a moved split boundary changes it. Stat-ing the files, not hashing
them, keeps the check cheap on folders of thousands of full-size photos.

Builds live under `<data_dir>/<source_id>/`, one folder per manual directory, so builds of two
folders never replace each other; `source_id` depends only on the manual directory's path, so
every process of a job computes it without reading the folder.
"""

import hashlib
import json
import os
import re

from diffmic_jax.data.examples import DataError, Splits

RECORD_NAME = 'source.json'
FORMAT = 1
DEMO_ID = 'packaged'  # The demo set shipped in the package: one source wherever it is installed.


def source_id(manual_dir: str) -> str:
  """`<folder name>-<hash of the absolute path>`: the folder a source's builds go in."""
  slug = re.sub(r'[^\w.-]', '_', os.path.basename(manual_dir.rstrip('/')) or 'root')[:40]
  return f'{slug}-{hashlib.sha256(manual_dir.encode()).hexdigest()[:10]}'


def _entry(ex, manual_dir: str) -> list:
  if ex.pixels is not None:
    return [ex.key, ex.label, hashlib.sha256(ex.pixels.tobytes()).hexdigest()[:16]]
  stat = os.stat(ex.path)
  return [ex.key, ex.label, os.path.relpath(ex.path, manual_dir), stat.st_size, stat.st_mtime_ns]


def record(manual_dir: str, splits: Splits, num_classes: int, options: dict) -> dict:
  """The source record of a build from `manual_dir` with these resolved, checked `splits`.

  Args:
    manual_dir: The absolute manual directory.
    splits: `{split: [Example]}` as the builder writes them.
    num_classes: K of the build (fixed by the dataset, or the largest label + 1).
    options: Build options that change the records (`skip_bad_examples`,
      `max_examples_per_split`).
  """
  body = {'format': FORMAT, 'num_classes': int(num_classes),
          'options': dict(sorted(options.items())),
          'splits': {name: [_entry(ex, manual_dir) for ex in examples]
                     for name, examples in sorted(splits.items())}}
  # The path is not hashed: it already names the folder, and the packaged demo set is one source
  # wherever the package is installed.
  digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
  return {'digest': digest, 'manual_dir': manual_dir, **body}


def read(folder) -> dict | None:
  """The record stored in a build folder (an `epath.Path`), or None when it has none."""
  path = folder / RECORD_NAME
  try:
    text = path.read_text()
  except (FileNotFoundError, OSError):
    return None
  try:
    return json.loads(text)
  except ValueError as e:
    raise DataError(f'{path}: not a source record ({e}); delete the build folder '
                    f'{folder} to rebuild it') from e


def write(folder, rec: dict) -> None:
  (folder / RECORD_NAME).write_text(json.dumps(rec, indent=0, sort_keys=True))


def summary(rec: dict) -> str:
  """`manual_dir (train 6, validation 6, test 12; K=5)` for log lines."""
  order = {'train': 0, 'validation': 1, 'test': 2}
  names = sorted(rec['splits'], key=lambda name: (order.get(name, 3), name))
  counts = ', '.join(f"{name} {len(rec['splits'][name])}" for name in names)
  return f"{rec['manual_dir']} ({counts}; K={rec['num_classes']})"


def _split_changes(name: str, old: list, new: list) -> list[str]:
  before, after = {row[0]: row for row in old}, {row[0]: row for row in new}
  added = [k for k in after if k not in before]
  removed = [k for k in before if k not in after]
  common = [k for k in after if k in before]
  relabelled = [f'{k}: {before[k][1]} -> {after[k][1]}' for k in common
                if before[k][1] != after[k][1]]
  modified = [k for k in common if before[k][2:] != after[k][2:]]
  out = []
  for what, keys in (('added', added), ('removed', removed), ('relabelled', relabelled),
                     ('image changed', modified)):
    if keys:
      out.append(f'{name}: {len(keys)} {what} (e.g. {keys[0]})')
  if not out and [r[0] for r in old] != [r[0] for r in new]:
    out.append(f'{name}: same examples in another order')
  return out


def changes(old: dict, new: dict) -> str:
  """What differs between two records of one manual directory, in one line."""
  out = [f"{key} {old.get(key)!r} -> {new.get(key)!r}"
         for key in ('format', 'num_classes', 'options') if old.get(key) != new.get(key)]
  for name in sorted(set(old.get('splits', {})) | set(new.get('splits', {}))):
    out += _split_changes(name, old.get('splits', {}).get(name, []),
                          new.get('splits', {}).get(name, []))
  return '; '.join(out) or 'the record differs'
