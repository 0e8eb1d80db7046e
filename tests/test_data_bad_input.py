"""Every bad input stops the build with a message naming the file and row, or is skipped.

Small image folders made from the embedded demo pixels (written as PNG), so these run anywhere;
the APTOS case reads the packaged split list against a labels.csv that lacks an id.
"""

import os
import pathlib

from data_helpers import data_cfg, write_folder
import numpy as np
from PIL import Image
import pytest

from diffmic_jax import data
from diffmic_jax.data import DataError


def _folder(root, n=6, split=True):
  """A valid image folder of n real 28 px fundus PNGs (2 per split), labels 0..2."""
  pixels = np.load(os.path.join(os.path.dirname(data.__file__), 'demo', 'retinamnist.npz'))
  (root / 'img').mkdir(parents=True)
  rows = []
  for i in range(n):
    Image.fromarray(pixels['test_images'][i]).save(root / 'img' / f'{i}.png')
    rows.append((f'img/{i}.png', i % 3, ('train', 'validation', 'test')[i % 3]))
  if not split:
    rows = [r[:2] for r in rows]
  write_folder(root, rows, ('file', 'label', 'split') if split else ('file', 'label'))
  return root


def _cfg(root, tmp_path, **kw):
  return data_cfg(name='image_folder', builder_config='default', manual_dir=str(root),
                  data_dir=str(tmp_path / 'tfds'), stored_size=28, **kw)


def _rewrite_row(root, row, text):
  lines = (root / 'labels.csv').read_text().splitlines()
  lines[row - 1] = text
  (root / 'labels.csv').write_text('\n'.join(lines) + '\n')


def _nothing_built(tmp_path):
  for dirpath, dirnames, filenames in os.walk(tmp_path / 'tfds'):
    assert 'dataset_info.json' not in filenames
    assert not [d for d in dirnames if d.startswith('incomplete')]


def test_valid_folder_builds(tmp_path):
  cfg = _cfg(_folder(tmp_path / 'f'), tmp_path)
  with pytest.raises(DataError, match='not built'):
    data.num_examples(cfg, 'train')
  data.prepare(cfg)
  assert data.num_examples(cfg, 'train') == 2 and data.class_counts(cfg, 'train') == [2, 0, 0]


@pytest.mark.parametrize('damage,message', [
    (lambda p: p.write_bytes(b'not an image at all'), 'cannot decode image'),
    (lambda p: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]), 'cannot decode image'),
    (lambda p: p.unlink(), 'missing file'),
])
def test_bad_image_names_file_and_row_and_leaves_nothing(tmp_path, damage, message):
  root = _folder(tmp_path / 'f')
  damage(root / 'img' / '4.png')  # Row 6 of labels.csv (header is row 1).
  with pytest.raises(DataError, match=message) as e:
    data.prepare(_cfg(root, tmp_path))
  assert 'labels.csv:6' in str(e.value) and '4.png' in str(e.value)
  _nothing_built(tmp_path)


def test_failed_build_then_fixed_build(tmp_path):
  root = _folder(tmp_path / 'f')
  good = (root / 'img' / '1.png').read_bytes()
  (root / 'img' / '1.png').write_bytes(b'garbage')
  with pytest.raises(DataError):
    data.prepare(_cfg(root, tmp_path))
  (root / 'img' / '1.png').write_bytes(good)
  data.prepare(_cfg(root, tmp_path))
  assert data.num_examples(_cfg(root, tmp_path), 'validation') == 2


@pytest.mark.parametrize('row,text,kw,message', [
    (3, 'img/1.png,7,validation', {'num_classes': 3}, r'labels.csv:3: label 7 outside \[0, 3\)'),
    (3, 'img/1.png,1,validation', {'num_classes': 2}, r'labels.csv:4: label 2 outside \[0, 2\)'),
    (3, 'img/1.png,-1,validation', {}, r'labels.csv:3: label -1 outside'),
    (3, 'img/1.png,cat,validation', {}, r"labels.csv:3: label 'cat' is not an integer"),
    (3, 'img/0.png,1,validation', {}, r"labels.csv:3: duplicate id 'img/0.png' \(first seen at "
                                      r'.*labels.csv:2\)'),
    (1, 'path,class,split', {}, r"labels.csv:1: missing column\(s\) \['file', 'label'\]"),
    (4, 'img/2.png,2,validation', {}, r"split 'test' is empty"),
    (3, 'img/1.png,1,holdout', {}, r"labels.csv:3: split 'holdout' is not one of"),
])
def test_bad_rows(tmp_path, row, text, kw, message):
  root = _folder(tmp_path / 'f')
  if 'empty' in message:
    _rewrite_row(root, 7, 'img/5.png,2,train')
  _rewrite_row(root, row, text)
  with pytest.raises(DataError, match=message):
    data.prepare(_cfg(root, tmp_path), **kw)
  _nothing_built(tmp_path)


def test_skip_option_skips_and_lists(tmp_path):
  root = _folder(tmp_path / 'f', n=9)
  (root / 'img' / '3.png').write_bytes(b'garbage')  # A train image, row 5.
  (root / 'img' / '6.png').unlink()  # Another train image, row 8.
  cfg = _cfg(root, tmp_path, skip_bad_examples=True)
  data.prepare(cfg)
  assert data.num_examples(cfg, 'train') == 1
  skipped = pathlib.Path(data.dataset.build_dir(cfg)) / 'skipped.txt'
  lines = skipped.read_text().splitlines()
  assert len(lines) == 2 and 'labels.csv:8' in lines[0] and 'labels.csv:5' in lines[1]


def test_folder_without_split_column_is_split_by_group(tmp_path):
  root = _folder(tmp_path / 'f', n=20, split=False)
  splits = data.resolve_splits(_cfg(root, tmp_path))
  assert sum(len(v) for v in splits.values()) == 20 and len(splits['train']) >= 12


def test_aptos_id_in_split_list_without_image(tmp_path):
  root = write_folder(tmp_path / 'aptos', [('x', 'images/x.jpg', 0)], ('image_id', 'file', 'label'))
  cfg = data_cfg(name='aptos2019', manual_dir=str(root), data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(DataError, match=r"aptos_train.csv:3: id '9ae54843c69a' is listed but has "
                                      'no image'):
    data.prepare(cfg)
  _nothing_built(tmp_path)


def test_unknown_names(tmp_path):
  with pytest.raises(DataError, match="data.name 'mnist'"):
    data.prepare(data_cfg(name='mnist'))
  with pytest.raises(DataError, match="builder_config 'random'"):
    data.prepare(data_cfg(name='aptos2019', builder_config='random'))
