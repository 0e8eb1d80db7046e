"""Image files named by a folder, a CSV or one image, read exactly as a built split would be.

A folder: every image file under it, sorted, each named by its path relative to the folder;
hidden files and folders (`.ipynb_checkpoints`, `.DS_Store`) are not images to predict. A CSV
(UTF-8, with or without a byte-order mark, or Windows-1252, as Excel saves it): a `file` column
(relative to the CSV's folder, or absolute), optional `label` and `id` columns. Every image is
decoded once before any model is compiled: an unreadable one stops there, naming it, or with
`skip_unreadable` is left out and listed. Each image goes through the build's crop / resize /
encode (`preprocess.encode_example`) and the read's decode, so a file predicts as it would from a
built split, and no dataset is built.
"""

import concurrent.futures
import dataclasses
import os

import grain
import numpy as np

from diffmic_jax.data.augment import EvalSource
from diffmic_jax.data.examples import DataError, Example, parse_label, read_csv
from diffmic_jax.data.preprocess import encode_example, readable

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


@dataclasses.dataclass(frozen=True)
class ImageFiles:
  """The images to predict.

  Attributes:
    source: The folder or CSV they came from.
    examples: One per image, in output order; `key` is the image's id, `label` -1 if unknown.
    labelled: Whether every image has a label (a CSV with a `label` column).
    skipped: One line per image left out as unreadable (`skip_unreadable`).
  """
  source: str
  examples: tuple
  labelled: bool
  skipped: tuple = ()

  @property
  def name(self) -> str:
    """The folder's name, or the CSV's file name without its suffix."""
    path = os.path.normpath(self.source)
    return os.path.basename(path) if os.path.isdir(path) else os.path.splitext(
        os.path.basename(path))[0]

  @property
  def ids(self) -> list[str]:
    return [ex.key for ex in self.examples]


def _from_folder(folder: str) -> list[Example]:
  found = []
  for root, dirs, names in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    for name in sorted(names):
      if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith('.'):
        path = os.path.join(root, name)
        found.append(Example(key=os.path.relpath(path, folder), label=-1, where=path, path=path))
  if not found:
    raise DataError(f'{folder}: no image files (looked for {", ".join(IMAGE_SUFFIXES)})')
  return found


def _from_csv(path: str, num_classes: int, skipped: list[str] | None) -> tuple[list[Example], bool]:
  rows = read_csv(path, ['file'])
  if not rows:
    raise DataError(f'{path}: no rows')
  labelled = 'label' in rows[0][1]
  base = os.path.dirname(os.path.abspath(path))
  out, seen = [], {}
  for line, row in rows:
    where = f'{path}:{line}'
    if not row['file']:
      raise DataError(f'{where}: empty file name')
    file = os.path.join(base, os.path.expanduser(row['file']))
    key = row.get('id') or row['file']
    label = parse_label(row['label'], where) if labelled else -1
    if labelled and not 0 <= label < num_classes:
      raise DataError(f'{where}: label {label} outside [0, {num_classes}) for {row["file"]!r}')
    if not os.path.isfile(file):
      if skipped is None:
        raise DataError(f'{where}: image file {file} not found')
      skipped.append(f'{where}: image file {file} not found')
      continue
    if key in seen:
      raise DataError(f'{where}: duplicate id {key!r} (first at {seen[key]})')
    seen[key] = where
    out.append(Example(key=key, label=label, where=where, path=file))
  return out, labelled


def _decodable(examples: list[Example], skipped: list[str] | None) -> list[Example]:
  """The examples whose images decode; the first that does not raises, or with `skipped` each
  is listed there and left out."""
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    problems = list(pool.map(readable, examples))
  kept = []
  for ex, problem in zip(examples, problems):
    if problem is None:
      kept.append(ex)
    elif skipped is None:
      raise DataError(f'{problem} (--config.eval.skip_unreadable=True leaves such files out)')
    else:
      skipped.append(problem)
  return kept


def list_images(path: str, num_classes: int, skip_unreadable: bool = False) -> ImageFiles:
  """The images a folder, CSV or image file names, checked (files decode, labels in [0, K), ids
  unique).

  Args:
    path: A folder of images, a CSV with a `file` column, or one image file.
    num_classes: K, for the labels of a CSV.
    skip_unreadable: Leave out missing and undecodable images (listed in `skipped`) instead of
      stopping at the first.

  Returns:
    The images, in output order.
  """
  path = os.path.expanduser(path)
  skipped = [] if skip_unreadable else None
  if os.path.isdir(path):
    examples, labelled = _from_folder(path), False
  elif os.path.isfile(path) and path.lower().endswith(IMAGE_SUFFIXES):
    examples, labelled = [Example(key=os.path.basename(path), label=-1, where=path,
                                  path=path)], False
  elif os.path.isfile(path):
    examples, labelled = _from_csv(path, num_classes, skipped)
  else:
    raise DataError(f'--input {path}: no such folder or CSV file, nor an image file')
  examples = _decodable(examples, skipped)
  if not examples:
    raise DataError(f'--input {path}: none of its {len(skipped)} images can be read (first: '
                    f'{skipped[0]})')
  return ImageFiles(path, tuple(examples), labelled, tuple(skipped or ()))


@dataclasses.dataclass(frozen=True)
class _FileRecords:
  """Random access: image i -> a stored record, `{'image': encoded bytes, 'label'}`."""
  examples: tuple = dataclasses.field(repr=False)
  stored_size: int | None
  encoding: str
  resize: str = 'bicubic'

  def __len__(self) -> int:
    return len(self.examples)

  def __getitem__(self, i: int) -> dict:
    ex = self.examples[i]
    return {'image': encode_example(ex, self.stored_size, self.encoding, self.resize),
            'label': np.int64(ex.label)}


def records(images: ImageFiles, stored_size: int | None, encoding: str, resize: str = 'bicubic'):
  """Random access to the images as stored records (what a build would have written)."""
  return _FileRecords(images.examples, stored_size, encoding, resize)


def make_file_iterator(images: ImageFiles, *, stored_size: int | None, encoding: str,
                       resize: str = 'bicubic',
                       image_size: int, global_batch_size: int, process_index: int = 0,
                       process_count: int = 1, read_threads: int = 4):
  """Padded, masked batches of the images, as `pipeline.make_eval_iterator` yields for a split.

  Args:
    images: From `list_images`.
    stored_size: The build's stored side (None: keep the source size, MedMNIST-style).
    encoding: The build's encoding, 'jpeg' or 'png'.
    resize: The build's resize filter, 'bilinear' or 'bicubic'.
    image_size: Side of the model input.
    global_batch_size: Batch over all processes; this process yields a 1/P share.
    process_index: This process, in [0, process_count).
    process_count: Number of processes.
    read_threads: Threads decoding images.

  Returns:
    A grain `IterDataset` of `{'image', 'label', 'mask', 'index'}` batches.
  """
  if global_batch_size % process_count:
    raise ValueError(f'global batch {global_batch_size} is not divisible by the '
                     f'{process_count} processes')
  b = global_batch_size // process_count
  source = EvalSource(records(images, stored_size, encoding, resize), image_size, b, process_index,
                      process_count)
  read = grain.ReadOptions(num_threads=max(1, read_threads), prefetch_buffer_size=2 * b)
  return grain.MapDataset.source(source).to_iter_dataset(read).batch(b)
