"""What a builder resolves before it touches a pixel: examples, split lists, and their checks.

Every builder first turns its manual directory into `{split: [Example, ...]}`. All the cheap
checks (CSV columns, missing files, ids with no image, labels outside [0, K), duplicate ids,
empty splits) run here, so a bad input stops the build before anything is written, with a
message naming the file and row. Tests use the same resolution to check split counts without
encoding a single image.
"""

import collections
import csv
import dataclasses
import hashlib
import io
import os
from typing import Any, Sequence

import numpy as np

from diffmic_jax.errors import UserError


class DataError(UserError, ValueError):
  """Bad input data; the message names the file and row."""


@dataclasses.dataclass(frozen=True)
class Example:
  """One labelled image, before preprocessing.

  Attributes:
    key: Unique id (Kaggle id_code, ISIC image id, file path, npz row).
    label: Class index in [0, K).
    where: `file:row` of the CSV row (or npz entry) that named it, for error messages.
    path: Image file to read, or None when `pixels` holds the image.
    pixels: uint8 [H, W, 3] (or [H, W]) array for array-backed sets (MedMNIST).
    group: Grouping key for group-aware splits (lesion_id, duplicate group); '' if none.
  """
  key: str
  label: int
  where: str
  path: str | None = None
  pixels: Any = dataclasses.field(default=None, compare=False, repr=False)
  group: str = ''


Splits = dict[str, list[Example]]


def read_text(path: str) -> str:
  """A text file as Excel and other tools save it: UTF-8 (with or without a byte-order mark),
  else Windows-1252; anything else is refused naming the file."""
  with open(path, 'rb') as f:
    raw = f.read()
  for encoding in ('utf-8-sig', 'cp1252'):
    try:
      text = raw.decode(encoding)
    except UnicodeDecodeError:
      continue
    if '\x00' not in text:  # NUL bytes: an image or other binary file, not a CSV.
      return text
  raise DataError(f'{path}: not a text file (neither UTF-8 nor Windows-1252)')


def read_csv(path: str, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
  """Reads a CSV with a header, checking that the required columns are present.

  Args:
    path: CSV file.
    required: Column names that must be in the header.

  Returns:
    `(line_number, row)` pairs; line numbers are 1-based file lines (the header is line 1).
  """
  if not os.path.isfile(path):
    raise DataError(f'{path}: file not found')
  reader = csv.DictReader(io.StringIO(read_text(path), newline=''))
  header = [h.strip() for h in (reader.fieldnames or [])]
  missing = [c for c in required if c not in header]
  if missing:
    raise DataError(f'{path}:1: missing column(s) {missing}; header is {header}, '
                    f'expected {list(required)}')
  reader.fieldnames = header
  return [(i + 2, {k: (v or '').strip() for k, v in row.items() if k is not None})
          for i, row in enumerate(reader)]


def parse_label(value: str, where: str) -> int:
  """Parses an integer label, naming the row if it is not one."""
  try:
    number = float(value)
  except ValueError:
    number = None
  if number is None or not number.is_integer():
    raise DataError(f'{where}: label {value!r} is not an integer class index')
  return int(number)


def split_list(path: str, id_column: str) -> list[tuple[str, int | None, str]]:
  """Reads a split list of ids (with an optional `label` column).

  Returns:
    `(id, label or None, where)` triples in file order.
  """
  rows = read_csv(path, [id_column])
  out = []
  for line, row in rows:
    where = f'{path}:{line}'
    label = parse_label(row['label'], where) if row.get('label', '') != '' else None
    out.append((row[id_column], label, where))
  return out


def class_count(splits: Splits, known: int = -1) -> int:
  """K: `known` when the dataset fixes it (> 0), else the largest label + 1."""
  return known if known > 0 else 1 + max(ex.label for part in splits.values() for ex in part)


def check_splits(splits: Splits, num_classes: int, *, skip_bad: bool = False,
                 skipped: list[str] | None = None) -> Splits:
  """Checks labels, duplicate ids, missing files and empty splits.

  Args:
    splits: Resolved splits.
    num_classes: K; labels must lie in [0, K).
    skip_bad: Drop bad examples (and record them in `skipped`) instead of raising.
    skipped: List that collects one message per skipped example.

  Returns:
    The splits, without the bad examples when `skip_bad`.
  """
  skipped = [] if skipped is None else skipped
  seen: dict[str, str] = {}
  out = {}
  for split, examples in splits.items():
    kept = []
    for ex in examples:
      problem = None
      if not 0 <= ex.label < num_classes:
        problem = f'{ex.where}: label {ex.label} outside [0, {num_classes}) for id {ex.key!r}'
      elif ex.key in seen:
        problem = f'{ex.where}: duplicate id {ex.key!r} (first seen at {seen[ex.key]})'
      elif ex.pixels is None and ex.path is None:
        problem = f'{ex.where}: id {ex.key!r} is listed but has no image in the manual directory'
      elif ex.pixels is None and not os.path.isfile(ex.path):
        problem = f'{ex.where}: id {ex.key!r} has no image (missing file {ex.path})'
      if problem:
        if not skip_bad:
          raise DataError(problem)
        skipped.append(problem)
        continue
      seen[ex.key] = ex.where
      kept.append(ex)
    if not kept:
      raise DataError(f'split {split!r} is empty' + (' after skipping bad examples' if examples
                                                      else ''))
    out[split] = kept
  return out


def class_counts_of(examples: Sequence[Example], num_classes: int) -> list[int]:
  """Per-class example counts, length K."""
  counts = collections.Counter(ex.label for ex in examples)
  return [counts.get(k, 0) for k in range(num_classes)]


def group_split(examples: Sequence[Example], fractions: Sequence[float],
                names: Sequence[str], salt: str = 'diffmic') -> Splits:
  """Deterministic group-aware split: all examples of one group land in one part.

  Groups are ordered by a hash of (salt, group) (stable across machines and Python versions)
  and cut at the cumulative example fractions, so parts have close to the requested sizes.

  Args:
    examples: Examples to split; `group` '' means the example is its own group.
    fractions: Fraction of examples per part (summing to 1).
    names: Split name per part.
    salt: Changes the assignment while keeping it deterministic.

  Returns:
    `{name: examples}` with the input order kept inside each part.
  """
  groups: dict[str, list[int]] = collections.defaultdict(list)
  for i, ex in enumerate(examples):
    groups[ex.group or f'__{ex.key}'].append(i)
  order = sorted(groups, key=lambda g: hashlib.sha256(f'{salt}/{g}'.encode()).hexdigest())
  bounds = np.cumsum(fractions) * len(examples)
  part_of = {}
  done = 0
  for g in order:
    part = min(int(np.searchsorted(bounds, done, side='right')), len(names) - 1)
    for i in groups[g]:
      part_of[i] = part
    done += len(groups[g])
  return {name: [ex for i, ex in enumerate(examples) if part_of[i] == p]
          for p, name in enumerate(names)}


def package_file(*parts: str) -> str:
  """Path of a file shipped inside diffmic_jax/data (split lists, demo set)."""
  return os.path.join(os.path.dirname(os.path.abspath(__file__)), *parts)
