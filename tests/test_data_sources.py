"""Builds are keyed by their source: another folder, a fixed label or a changed image is rebuilt.

Small image folders of real HAM10000 and APTOS images share one `data.data_dir`, as they would
under the default `~/tensorflow_datasets`. Also the class count: the config's `num_classes` is
checked against the dataset's and the labels' before anything is built or trained.
"""

import json
import logging
import os
import pathlib
import shutil

from data_helpers import aptos_subset, data_cfg, ham_folder
import pytest

from configs import aptos
from diffmic_jax import data
from diffmic_jax.data import DataError, dataset


def _folder_cfg(folder, data_dir, **kw):
  return data_cfg(name='image_folder', builder_config='default',
                  manual_dir=None if folder is None else str(folder), data_dir=str(data_dir),
                  stored_size=32, **kw)


def _records(cfg):
  """`{split: [(id, label)]}` as training reads them, in a fresh process's view."""
  dataset._BUILT.clear()
  out = {}
  for split in ('train', 'validation', 'test'):
    src = dataset.data_source(cfg, split)
    out[split] = [(r['id'].decode() if isinstance(r['id'], bytes) else r['id'], int(r['label']))
                  for r in src.__getitems__(range(len(src)))]
  return out


def _info(cfg) -> pathlib.Path:
  return pathlib.Path(dataset.build_dir(cfg)) / 'dataset_info.json'


def _set_label(folder, file_name, label):
  lines = (folder / 'labels.csv').read_text().splitlines()
  row = next(i for i, line in enumerate(lines) if line.startswith(file_name + ','))
  parts = lines[row].split(',')
  parts[1] = str(label)
  lines[row] = ','.join(parts)
  (folder / 'labels.csv').write_text('\n'.join(lines) + '\n')
  return row + 1


def test_second_folder_gets_its_own_build(data_root, tmp_path):
  first = _folder_cfg(ham_folder(data_root, tmp_path / 'a', 12), tmp_path / 'tfds')
  second = _folder_cfg(ham_folder(data_root, tmp_path / 'b', 15, start=100), tmp_path / 'tfds')
  data.prepare(first)
  data.prepare(second)
  a, b = _records(first), _records(second)
  assert sum(map(len, a.values())) == 12 and sum(map(len, b.values())) == 15
  assert not {i for s in a.values() for i, _ in s} & {i for s in b.values() for i, _ in s}
  assert sorted(i for s in b.values() for i, _ in s) == sorted(
      f'images/{p.name}' for p in (tmp_path / 'b' / 'images').iterdir())
  before = _info(first).stat().st_mtime_ns
  data.prepare(first)  # Each folder keeps its build: going back rebuilds nothing.
  assert _info(first).stat().st_mtime_ns == before and _info(first) != _info(second)


def test_ten_then_forty_images_in_one_data_dir(data_root, tmp_path):
  shared = tmp_path / 'tensorflow_datasets'
  small = _folder_cfg(ham_folder(data_root, tmp_path / 'predict_me', 10), shared)
  large = _folder_cfg(ham_folder(data_root, tmp_path / 'train_me', 40, start=10), shared)
  data.prepare(small)
  data.prepare(large)
  assert [data.num_examples(large, s) for s in ('train', 'validation', 'test')] == [14, 13, 13]
  assert data.check_num_classes(large, None) == 7  # Labels up to VASC (6) in these 40.
  assert [data.num_examples(small, s) for s in ('train', 'validation', 'test')] == [4, 3, 3]


def test_label_fixed_in_place_is_rebuilt(data_root, tmp_path, caplog):
  folder = aptos_subset(data_root, tmp_path / 'f', per_split=6)
  cfg = _folder_cfg(folder, tmp_path / 'tfds')
  data.prepare(cfg)
  fixed_id, old = _records(cfg)['test'][0]
  new = (old + 1) % 5
  _set_label(folder, fixed_id, new)
  with caplog.at_level(logging.WARNING):
    data.prepare(cfg)
  assert _records(cfg)['test'][0] == (fixed_id, new)
  assert f'test: 1 relabelled (e.g. {fixed_id}: {old} -> {new})' in caplog.text
  recorded = json.loads((_info(cfg).parent / 'source.json').read_text())['splits']['test']
  assert [row[1] for row in recorded if row[0] == fixed_id] == [new]


def test_replaced_image_and_added_row_are_rebuilt(data_root, tmp_path, caplog):
  folder = ham_folder(data_root, tmp_path / 'f', 9)
  cfg = _folder_cfg(folder, tmp_path / 'tfds')
  data.prepare(cfg)
  replaced = (folder / 'labels.csv').read_text().splitlines()[1].split(',')[0]  # A train image.
  def image_of(name):
    src = dataset.data_source(cfg, 'train')
    return next(r['image'] for r in src.__getitems__(range(len(src)))
                if r['id'] in (name, name.encode()))

  first = image_of(replaced)
  shutil.copy(data_root / 'ham10000_224' / 'images' / os.listdir(
      data_root / 'ham10000_224' / 'images')[-1], folder / replaced)  # Another photo, same name.
  extra = ham_folder(data_root, tmp_path / 'extra', 1, start=500)
  shutil.copy(next((extra / 'images').iterdir()), folder / 'images' / 'new.jpg')
  with open(folder / 'labels.csv', 'a') as f:
    f.write('images/new.jpg,1,train\n')
  with caplog.at_level(logging.WARNING):
    data.prepare(cfg)
  dataset._BUILT.clear()
  assert data.num_examples(cfg, 'train') == 4
  assert image_of(replaced) != first
  assert 'train: 1 added (e.g. images/new.jpg)' in caplog.text
  assert f'train: 1 image changed (e.g. {replaced})' in caplog.text


def test_unchanged_source_is_reused(data_root, tmp_path, caplog):
  cfg = _folder_cfg(ham_folder(data_root, tmp_path / 'f', 9), tmp_path / 'tfds')
  data.prepare(cfg)
  built = pathlib.Path(dataset.build_dir(cfg))
  stamp = {p: p.stat().st_mtime_ns for p in built.iterdir()}
  dataset._BUILT.clear()
  with caplog.at_level(logging.INFO):
    data.prepare(data_cfg(**cfg.to_dict()))  # As a new process would: same config, fresh object.
  assert {p: p.stat().st_mtime_ns for p in built.iterdir()} == stamp
  assert f'Using the build in {built}' in caplog.text and 'Building' not in caplog.text


def test_unset_manual_dir_reads_the_one_build_or_refuses(data_root, tmp_path):
  one = _folder_cfg(ham_folder(data_root, tmp_path / 'a', 6), tmp_path / 'tfds')
  data.prepare(one)
  unset = _folder_cfg(None, tmp_path / 'tfds')
  assert dataset.build_dir(unset) == dataset.build_dir(one)
  assert data.num_examples(unset, 'train') == 2
  data.prepare(_folder_cfg(ham_folder(data_root, tmp_path / 'b', 6, start=50), tmp_path / 'tfds'))
  dataset._BUILT.clear()
  with pytest.raises(DataError, match=r'data.manual_dir is unset and .* from 2 sources \(.*'
                                      f'{tmp_path / "a"}.*{tmp_path / "b"}'):
    data.num_examples(unset, 'train')


def test_config_num_classes_must_match_the_dataset(data_root):
  config = aptos.get_config()
  config.num_classes = 7
  config.data.manual_dir = str(data_root / 'aptos2019_224')
  with pytest.raises(DataError, match=r'num_classes is 7 but aptos2019 '
                                      r'\(diffmic_224_png_bilinear\) has 5 classes'):
    data.prepare(config.data, config.num_classes)


def test_image_folder_num_classes_is_inferred_or_checked(data_root, tmp_path, caplog):
  cfg = _folder_cfg(ham_folder(data_root, tmp_path / 'f', 9), tmp_path / 'tfds')  # Labels 1.
  with pytest.raises(DataError, match=r'labels.csv:2: label 1 outside \[0, 1\)'):
    data.prepare(cfg, num_classes=1)
  data.prepare(cfg)
  assert data.check_num_classes(cfg, None) == 2  # Largest label + 1.
  with pytest.raises(DataError, match=r'num_classes is 1 but the labels of .*/f span 2 classes'):
    data.check_num_classes(cfg, 1)
  with caplog.at_level(logging.WARNING):
    assert data.check_num_classes(cfg, 7) == 7
  assert 'classes 2..6 have no examples' in caplog.text


def test_data_config_has_no_sentinels_and_one_class_count():
  base = data_cfg()
  assert base.manual_dir is None
  assert 'num_classes' not in base and 'test_split' not in base
  with pytest.raises(AttributeError):
    data_cfg(num_classes=4)  # One source of truth: the top-level `num_classes`.


def test_a_host_without_the_source_reads_the_build(data_root, tmp_path, caplog):
  """Other processes of a job may lack the folder: the source id comes from its path alone."""
  folder = ham_folder(data_root, tmp_path / 'f', 9)
  cfg = _folder_cfg(folder, tmp_path / 'tfds')
  data.prepare(cfg)
  built = dataset.build_dir(cfg)
  folder.rename(tmp_path / 'elsewhere')
  dataset.forget(cfg)
  assert dataset.build_dir(cfg) == built
  with caplog.at_level(logging.INFO):
    data.prepare(cfg, num_classes=2)
  assert f'(not checked: {folder} is not on this host)' in caplog.text
  assert [data.num_examples(cfg, s) for s in ('train', 'validation', 'test')] == [3, 3, 3]
  with pytest.raises(DataError, match='num_classes is 1 but the labels of .* span 2 classes'):
    data.prepare(cfg, num_classes=1)
