"""Split resolution on the real data: DiffMIC's counts per class, disjoint grouped splits.

Resolution reads only CSVs and checks that files exist, so the full lists are checked here
without encoding an image.
"""

import csv

from data_helpers import data_cfg
import pytest

from diffmic_jax.data import resolve_splits
from diffmic_jax.data.examples import class_counts_of

APTOS_TRAIN = [1250, 274, 685, 141, 214]
APTOS_TEST = [555, 96, 314, 52, 81]


@pytest.fixture(scope='module')
def aptos(data_root):
  return lambda scheme: resolve_splits(data_cfg(
      name='aptos2019', builder_config=scheme, manual_dir=str(data_root / 'aptos2019_224')))


@pytest.fixture(scope='module')
def isic(data_root):
  return lambda scheme: resolve_splits(data_cfg(
      name='isic2018', builder_config=scheme, manual_dir=str(data_root / 'ham10000_224')))


def _keys(splits):
  return {name: {ex.key for ex in examples} for name, examples in splits.items()}


def test_aptos_diffmic_counts(aptos):
  splits = aptos('diffmic')
  train_full = splits['train'] + splits['validation']
  assert class_counts_of(train_full, 5) == APTOS_TRAIN
  assert len(splits['validation']) == 352
  assert class_counts_of(splits['test'], 5) == APTOS_TEST


def test_aptos_validation_is_published_list(aptos, data_root):
  with open(data_root / 'splits' / 'aptos_audit' / 'r1_val_ids.csv') as f:
    published = {row['id'] for row in csv.DictReader(f)}
  assert _keys(aptos('diffmic'))['validation'] == published


def test_aptos_grouped_is_disjoint_by_duplicate_group(aptos, data_root):
  keys = _keys(aptos('grouped'))
  assert [len(keys[s]) for s in ('train', 'validation', 'test')] == [2564, 550, 548]
  with open(data_root / 'splits' / 'aptos_audit' / 'duplicate_groups.csv') as f:
    group = {row['id_code']: row['group_id'] for row in csv.DictReader(f)}
  groups = {s: {group[k] for k in ids} for s, ids in keys.items()}
  for a, b in (('train', 'validation'), ('train', 'test'), ('validation', 'test')):
    assert not keys[a] & keys[b]
    assert not groups[a] & groups[b], f'a duplicate group spans {a} and {b}'


def test_isic_diffmic_counts_and_lesion_carved_validation(isic):
  splits = isic('diffmic')
  assert len(splits['train']) + len(splits['validation']) == 4182
  assert len(splits['test']) == 1802
  assert 0.1 < len(splits['validation']) / 4182 < 0.2
  lesions = {s: {ex.group for ex in exs} for s, exs in splits.items()}
  assert not lesions['train'] & lesions['validation']
  assert sum(class_counts_of(splits['test'], 7)) == 1802


def test_isic_grouped_is_lesion_disjoint(isic):
  splits = isic('grouped')
  assert sum(len(v) for v in splits.values()) == 5984
  keys = _keys(splits)
  lesions = {s: {ex.group for ex in exs} for s, exs in splits.items()}
  for a, b in (('train', 'validation'), ('train', 'test'), ('validation', 'test')):
    assert not keys[a] & keys[b]
    assert not lesions[a] & lesions[b], f'a lesion spans {a} and {b}'
  fractions = [len(splits[s]) / 5984 for s in ('train', 'validation', 'test')]
  assert fractions == pytest.approx([0.7, 0.15, 0.15], abs=0.02)


def test_demo_official_splits():
  splits = resolve_splits(data_cfg(name='demo', builder_config='retinamnist'))
  assert {k: len(v) for k, v in splits.items()} == {'train': 1080, 'validation': 120, 'test': 400}


def test_medmnist_from_shared_folder(data_root):
  splits = resolve_splits(data_cfg(name='medmnist', builder_config='breastmnist',
                                   manual_dir=str(data_root / 'breastmnist')))
  assert {k: len(v) for k, v in splits.items()} == {'train': 546, 'validation': 78, 'test': 156}
  assert max(ex.label for ex in splits['train']) == 1


def test_isic_original_download_layout(data_root, tmp_path):
  """HAM10000_metadata.csv plus `<image_id>.jpg` anywhere below the folder."""
  import shutil  # pylint: disable=g-import-not-at-top
  with open(data_root / 'ham10000_224' / 'labels.csv') as f:
    rows = list(csv.DictReader(f))[:30]
  (tmp_path / 'HAM10000_images_part_1').mkdir()
  with open(tmp_path / 'HAM10000_metadata.csv', 'w') as f:
    f.write('lesion_id,image_id,dx,dx_type,age,sex,localization\n')
    for row in rows:
      f.write(f"{row['lesion_id']},{row['image_id']},{row['dx']},histo,50.0,male,back\n")
      shutil.copy(data_root / 'ham10000_224' / row['file'],
                  tmp_path / 'HAM10000_images_part_1' / f"{row['image_id']}.jpg")
  splits = resolve_splits(data_cfg(name='isic2018', builder_config='grouped',
                                   manual_dir=str(tmp_path)))
  labels = {row['image_id']: int(row['label']) for row in rows}
  assert all(ex.label == labels[ex.key] for exs in splits.values() for ex in exs)
  assert sum(len(v) for v in splits.values()) == 30
