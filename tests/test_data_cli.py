"""`tfds build` (through the TF-free launcher) writes what `prepare` writes and training reads.

The builds run TFDS's own build command in a subprocess on real images: a few dozen copied APTOS
images as an image folder, the real APTOS folder capped by `--max_examples_per_split`, and the
ISIC 2018 `official` scheme on a synthetic layout made of real HAM10000 images.
"""

import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys

from data_helpers import aptos_subset, data_cfg
import pytest

from diffmic_jax import data
from diffmic_jax.data import DataError
from diffmic_jax.data.builders import isic2018

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tfds_build(*args):
  """Runs `python -m diffmic_jax.data.cli build ARGS`, failing with its output if it fails."""
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join(
      [str(REPO), *filter(None, [os.environ.get('PYTHONPATH')])])}
  run = subprocess.run([sys.executable, '-m', 'diffmic_jax.data.cli', 'build', *map(str, args)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  return run


def _records(cfg, split):
  src = data.dataset.data_source(cfg, split)
  return [(r['id'], r['label'], r['image']) for r in src.__getitems__(range(len(src)))]


def _eval_count(cfg, split, size):
  batches = list(data.make_eval_iterator(cfg, split, image_size=size, global_batch_size=8))
  assert batches[0]['image'].shape[1:] == (size, size, 3)
  return int(sum(b['mask'].sum() for b in batches))


@pytest.mark.slow
def test_cli_build_equals_prepare_and_is_read_by_training(data_root, tmp_path):
  """A custom stored size given as JSON lands where `prepare` (data.stored_size=64) looks."""
  folder = aptos_subset(data_root, tmp_path / 'f', per_split=12)
  config = json.dumps({'name': 'default_64_png_bilinear', 'scheme': 'default', 'stored_size': 64})
  _tfds_build('image_folder', f'--config={config}', f'--manual_dir={folder}',
              f'--data_dir={tmp_path / "cli"}')
  by_cli, by_api = (data_cfg(name='image_folder', builder_config='default', stored_size=64,
                             manual_dir=str(folder), data_dir=str(tmp_path / d))
                    for d in ('cli', 'api'))
  built = {cfg.data_dir: pathlib.Path(data.dataset.build_dir(cfg)) for cfg in (by_cli, by_api)}
  info = built[by_cli.data_dir] / 'dataset_info.json'
  assert info.is_file() and info.parent.parent.parent.parent.parent == tmp_path / 'cli'
  before = info.stat().st_mtime_ns
  data.prepare(by_cli)  # Already built by the command line from the same source: nothing to do.
  assert info.stat().st_mtime_ns == before
  data.prepare(by_api)
  listing = lambda d: sorted(p.relative_to(d) for p in d.rglob('*array_record*'))
  assert listing(built[by_cli.data_dir]) == listing(built[by_api.data_dir])
  for split in ('train', 'validation', 'test'):
    assert _records(by_cli, split) == _records(by_api, split)  # Same ids, labels, bytes.
  assert [data.num_examples(by_cli, s) for s in ('train', 'validation', 'test')] == [6, 6, 12]
  assert _eval_count(by_cli, 'test', 64) == 12


@pytest.mark.slow
def test_cli_build_real_aptos_listed_config(data_root, tmp_path):
  """The documented command on the real 224 px APTOS folder, capped at 5 examples per split."""
  _tfds_build('aptos2019', '--config=diffmic_224_png_bilinear',
              f'--manual_dir={data_root / "aptos2019_224"}', f'--data_dir={tmp_path}',
              '--max_examples_per_split=5')
  cfg = data_cfg(name='aptos2019', builder_config='diffmic', data_dir=str(tmp_path))
  built = pathlib.Path(data.dataset.build_dir(cfg))  # data.manual_dir unset: the one build there.
  assert built.relative_to(tmp_path).parts[1:] == ('aptos2019', 'diffmic_224_png_bilinear', '1.0.0')
  record = json.loads((built / 'source.json').read_text())
  assert record['manual_dir'] == str(data_root / 'aptos2019_224')
  assert record['options']['max_examples_per_split'] == 5
  assert [data.num_examples(cfg, s) for s in ('train', 'validation', 'test')] == [5, 5, 5]
  assert _eval_count(cfg, 'validation', 224) == 5


def _isic_layout(data_root, root, n_train=30, test_per_class=1, header_only=False):
  """HAM10000 training folder plus an official-test layout; real images, synthetic test set.

  The first `n_train` images of ham10000_224 are the training images (labels.csv); one further
  image per class poses as an ISIC 2018 Task 3 test image under ISIC2018_Task3_Test_Input/,
  with a generated one-hot ISIC2018_Task3_Test_GroundTruth.csv (inside the folder its zip
  unpacks to). The real test set is not in ../shared/data.
  """
  src = data_root / 'ham10000_224'
  with open(src / 'labels.csv') as f:
    rows = list(csv.DictReader(f))
  train, test = rows[:n_train], []
  for k in range(7):
    test += [r for r in rows[n_train:] if int(r['label']) == k][:test_per_class]
  (root / 'images').mkdir(parents=True)
  with open(root / 'labels.csv', 'w') as f:
    f.write('image_id,file,label,lesion_id\n')
    for r in train:
      shutil.copy(src / r['file'], root / 'images' / os.path.basename(r['file']))
      f.write(f"{r['image_id']},images/{os.path.basename(r['file'])},{r['label']},"
              f"{r['lesion_id']}\n")
  (root / 'ISIC2018_Task3_Test_Input').mkdir()
  (root / 'ISIC2018_Task3_Test_GroundTruth').mkdir()
  with open(root / 'ISIC2018_Task3_Test_GroundTruth' / isic2018.TEST_LABELS, 'w') as f:
    f.write('image,' + ','.join(isic2018.CLASS_NAMES) + '\n')
    for r in ([] if header_only else test):
      shutil.copy(src / r['file'], root / 'ISIC2018_Task3_Test_Input' / f"{r['image_id']}.jpg")
      one_hot = ['1.0' if k == int(r['label']) else '0.0' for k in range(7)]
      f.write(f"{r['image_id']}," + ','.join(one_hot) + '\n')
  return root


@pytest.mark.slow
def test_isic_official_test_set_through_cli(data_root, tmp_path):
  """Synthetic layout: real HAM10000 images posing as the official test images (see above)."""
  manual = _isic_layout(data_root, tmp_path / 'manual')
  _tfds_build('isic2018', '--config=official_224_png_bilinear', f'--manual_dir={manual}',
              f'--data_dir={tmp_path / "tfds"}')
  cfg = data_cfg(name='isic2018', builder_config='official', manual_dir=str(manual),
                 data_dir=str(tmp_path / 'tfds'))
  assert data.class_counts(cfg, 'test') == [1] * 7  # Labels from the one-hot columns.
  assert data.num_examples(cfg, 'train') + data.num_examples(cfg, 'validation') == 30
  splits = data.resolve_splits(cfg)
  lesions = {s: {ex.group for ex in splits[s]} for s in ('train', 'validation')}
  assert splits['validation'] and not lesions['train'] & lesions['validation']
  assert _eval_count(cfg, 'test', 224) == 7


def test_isic_official_names_missing_files(data_root, tmp_path):
  manual = _isic_layout(data_root, tmp_path / 'manual', n_train=10, header_only=True)
  cfg = data_cfg(name='isic2018', builder_config='official', manual_dir=str(manual),
                 data_dir=str(tmp_path / 'tfds'))
  shutil.rmtree(manual / 'ISIC2018_Task3_Test_Input')
  with pytest.raises(DataError, match=r'missing ISIC2018_Task3_Test_Input/ \(or '
                                      r'ISIC2018_Task3_Test_Images/\)\. Unpack'):
    data.prepare(cfg)
  shutil.rmtree(manual / 'ISIC2018_Task3_Test_GroundTruth')
  with pytest.raises(DataError, match=r'missing ISIC2018_Task3_Test_GroundTruth\.csv .* and '
                                      'ISIC2018_Task3_Test_Input/'):
    data.prepare(cfg)
  assert not (tmp_path / 'tfds').exists() or not list((tmp_path / 'tfds').rglob('*.json'))


def test_isic_official_bad_one_hot_row(data_root, tmp_path):
  manual = _isic_layout(data_root, tmp_path / 'manual', n_train=10)
  gt = manual / 'ISIC2018_Task3_Test_GroundTruth' / isic2018.TEST_LABELS
  lines = gt.read_text().splitlines()
  lines[3] = lines[3].rsplit(',', 1)[0] + ',1.0'  # Row 4 now has two ones.
  gt.write_text('\n'.join(lines) + '\n')
  with pytest.raises(DataError, match=f'{isic2018.TEST_LABELS}:4: expected one-hot'):
    data.resolve_splits(data_cfg(name='isic2018', builder_config='official',
                                 manual_dir=str(manual)))


def test_every_scheme_is_a_listed_config():
  """`tfds build <name> --config=<scheme>_<size>` exists for every scheme `config.data` names."""
  for name, schemes in (('aptos2019', ('diffmic', 'grouped')),
                        ('isic2018', ('diffmic', 'grouped', 'official')),
                        ('image_folder', ('default',))):
    listed = {c.name for c in data.dataset.BUILDERS[name].BUILDER_CONFIGS}
    assert {f'{s}_{n}' for s in schemes for n in (224, 256)} <= listed
  assert all(c.num_classes == 7 for c in data.dataset.BUILDERS['isic2018'].BUILDER_CONFIGS)
