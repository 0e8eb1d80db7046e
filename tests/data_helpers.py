"""Shared helpers for the data tests: configs, a demo build, and small real-image folders.

Builds go to one temporary folder for the whole test run; slow parts use a few dozen real images
copied into `tmp_path`, never the whole set.
"""

import csv
import os
import pathlib
import importlib.util
import shutil

_DEFAULT = pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'default.py'
_spec = importlib.util.spec_from_file_location('_diffmic_default_config', _DEFAULT)
default = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(default)


def data_cfg(**overrides):
  """`config.data` from the base config with `overrides` applied (an unknown field raises)."""
  cfg = default.get_config().data
  cfg.lock()
  for key, value in overrides.items():
    setattr(cfg, key, value)
  return cfg


def demo_cfg(data_dir, **overrides):
  """The embedded RetinaMNIST demo set, built under `data_dir`."""
  return data_cfg(**{'name': 'demo', 'builder_config': 'retinamnist', 'data_dir': str(data_dir),
                      **overrides})


def write_folder(root: pathlib.Path, rows, header=('file', 'label', 'split')) -> pathlib.Path:
  """Writes `labels.csv` with `rows` into `root` (created), returning `root`."""
  root.mkdir(parents=True, exist_ok=True)
  with open(root / 'labels.csv', 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  return root


def aptos_subset(data_root: pathlib.Path, dest: pathlib.Path, per_split: int = 12):
  """Copies the first `per_split` APTOS images of each DiffMIC side into an image folder.

  Returns:
    The folder, with `labels.csv` (`file,label,split`); 'train' side split into train and
    validation halves.
  """
  src = data_root / 'aptos2019_224'
  rows, taken = [], {'train': 0, 'test': 0}
  with open(src / 'labels.csv') as f:
    for row in csv.DictReader(f):
      side = row['diffmic_split']
      if taken[side] >= per_split:
        continue
      taken[side] += 1
      name = os.path.basename(row['file'])
      (dest / 'images').mkdir(parents=True, exist_ok=True)
      shutil.copy(src / row['file'], dest / 'images' / name)
      split = side if side == 'test' or taken[side] % 2 else 'validation'
      rows.append((f'images/{name}', row['label'], split))
  return write_folder(dest, rows)


def ham_folder(data_root: pathlib.Path, dest: pathlib.Path, n: int, start: int = 0):
  """Copies HAM10000 images `start` .. `start + n - 1` into an image folder.

  Returns:
    The folder, with `labels.csv` (`file,label,split`), splits cycling train/validation/test.
  """
  src = data_root / 'ham10000_224'
  with open(src / 'labels.csv') as f:
    picked = list(csv.DictReader(f))[start:start + n]
  (dest / 'images').mkdir(parents=True, exist_ok=True)
  rows = []
  for i, row in enumerate(picked):
    name = os.path.basename(row['file'])
    shutil.copy(src / row['file'], dest / 'images' / name)
    rows.append((f'images/{name}', row['label'], ('train', 'validation', 'test')[i % 3]))
  return write_folder(dest, rows)
