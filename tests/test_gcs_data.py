"""A gs:// `data.data_dir`, against the local GCS server of tests/conftest.py; nothing is mocked.

Process 0's `prepare` builds the embedded demo set on its local disk and uploads it; another host
(another staging cache, `$DIFFMIC_DATA_CACHE`) reads the bucket through the real grain pipeline
from the copy it stages, batch for batch the same as a plain local build. The copy is reused by
the next read, redone when a copy was killed, and a file missing in the bucket is named with its
URL.
"""

import json

from data_helpers import data_cfg, demo_cfg, ham_folder
from etils import epath
import numpy as np
import pytest

from conftest import GCS_BUCKET
from diffmic_jax import data
from diffmic_jax.data import dataset, staging

pytestmark = pytest.mark.slow  # A GCS server and dataset builds.

URL = f'gs://{GCS_BUCKET}/tfds'
BUILT = 'packaged/demo/retinamnist/1.0.0'  # <source id>/<name>/<config>/<version>
SHARD = 'demo-train.array_record-00000-of-00001'


@pytest.fixture(scope='module')
def hosts(gcs, tmp_path_factory):
  """Host 0 prepares into the bucket (its cache: host0/); reads here are host 1's (host1/)."""
  root = tmp_path_factory.mktemp('hosts')
  with pytest.MonkeyPatch.context() as env:
    env.setenv('DIFFMIC_DATA_CACHE', str(root / 'host0'))
    data.prepare(demo_cfg(URL))
    env.setenv('DIFFMIC_DATA_CACHE', str(root / 'host1'))
    yield {'host0': root / 'host0' / 'gs' / GCS_BUCKET / 'tfds' / BUILT,
           'host1': root / 'host1' / 'gs' / GCS_BUCKET / 'tfds' / BUILT}


@pytest.fixture(scope='module')
def local(demo_build):
  return demo_build


def _batches(cfg):
  """The first training batch and the first test batch, as the trainer reads them."""
  train = next(data.make_train_iterator(cfg, image_size=28, global_batch_size=16, seed=0))
  test = next(iter(data.make_eval_iterator(cfg, 'test', image_size=28, global_batch_size=16)))
  return train, test


def _assert_same(a, b):
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _reread(cfg):
  """Reads as a fresh process would: the builders one process keeps are forgotten."""
  dataset._BUILT.clear()
  return _batches(cfg)


def test_prepare_builds_locally_and_uploads(hosts, local):
  remote = epath.Path(URL, BUILT)
  assert (remote / 'dataset_info.json').exists()
  assert (remote / SHARD).read_bytes() == epath.Path(local.data_dir, BUILT, SHARD).read_bytes()
  assert (hosts['host0'] / staging.MARKER).exists()  # Host 0 need not download what it built.
  data.prepare(demo_cfg(URL))  # Built: nothing is rebuilt or uploaded again.
  assert not (hosts['host1'] / staging.MARKER).exists()


def test_reading_the_bucket_matches_the_local_build(hosts, local):
  cfg = demo_cfg(URL)
  _assert_same(_batches(cfg), _batches(local))
  assert data.class_counts(cfg, 'train') == data.class_counts(local, 'train')
  assert (hosts['host1'] / staging.MARKER).exists()
  assert (hosts['host1'] / SHARD).stat().st_size == (epath.Path(URL, BUILT) / SHARD).stat().length


def test_a_second_read_reuses_the_copy(hosts, local):
  cfg = demo_cfg(URL)
  _batches(cfg)
  files = [hosts['host1'] / staging.MARKER, hosts['host1'] / SHARD]
  before = [f.stat().st_mtime_ns for f in files]
  _assert_same(_reread(cfg), _batches(local))
  assert [f.stat().st_mtime_ns for f in files] == before


def test_a_killed_copy_is_redone(hosts, local):
  cfg = demo_cfg(URL)
  _batches(cfg)
  copy = hosts['host1']
  (copy / staging.MARKER).unlink()  # Killed before the marker: some files missing or short.
  (copy / SHARD).unlink()
  test_shard = copy / 'demo-test.array_record-00000-of-00001'
  test_shard.write_bytes(test_shard.read_bytes()[:1000])
  _assert_same(_reread(cfg), _batches(local))
  assert (copy / staging.MARKER).exists()
  assert test_shard.stat().st_size == (epath.Path(URL, BUILT) / test_shard.name).stat().length


def test_a_rebuilt_bucket_is_fetched_again(hosts):
  cfg = demo_cfg(URL)
  _batches(cfg)
  marker = hosts['host1'] / staging.MARKER
  recorded = json.loads(marker.read_text())
  size = recorded['files']['features.json']
  recorded['files']['features.json'] += 1  # What the copy holds no longer matches the bucket.
  marker.write_text(json.dumps(recorded))
  _reread(cfg)
  assert json.loads(marker.read_text())['files']['features.json'] == size


def test_errors_name_the_url_and_the_missing_file(hosts):
  empty = f'gs://{GCS_BUCKET}/empty'
  with pytest.raises(data.DataError, match=f'{empty}/{BUILT}.*dataset_info.json'):
    data.num_examples(demo_cfg(empty), 'train')
  broken = epath.Path(f'gs://{GCS_BUCKET}/broken', BUILT)
  for name in ('dataset_info.json', 'features.json'):  # Copied up by hand, the shards forgotten.
    (epath.Path(URL, BUILT) / name).copy(broken / name)
  with pytest.raises(data.DataError, match=f'{broken} has no {SHARD}'):
    data.num_examples(demo_cfg(f'gs://{GCS_BUCKET}/broken'), 'train')


def test_a_source_fixed_after_upload_reaches_every_host(gcs, data_root, tmp_path, monkeypatch):
  """Host 0 rebuilds a relabelled folder into the bucket; host 1's copy, same sizes, is refetched."""
  folder = ham_folder(data_root, tmp_path / 'f', 9)
  url = f'gs://{GCS_BUCKET}/relabelled'
  cfg = data_cfg(name='image_folder', builder_config='default', manual_dir=str(folder),
                 data_dir=url, stored_size=32)
  labels = lambda: sorted(data.dataset.labels_of(cfg, 'test').tolist())
  monkeypatch.setenv('DIFFMIC_DATA_CACHE', str(tmp_path / 'host0'))
  data.prepare(cfg)
  monkeypatch.setenv('DIFFMIC_DATA_CACHE', str(tmp_path / 'host1'))
  dataset.forget(cfg)
  assert labels() == [1, 1, 1]
  rows = (folder / 'labels.csv').read_text().replace('images/ISIC_0024308.jpg,1,test',
                                                     'images/ISIC_0024308.jpg,4,test')
  (folder / 'labels.csv').write_text(rows)
  monkeypatch.setenv('DIFFMIC_DATA_CACHE', str(tmp_path / 'host0'))
  data.prepare(cfg)
  monkeypatch.setenv('DIFFMIC_DATA_CACHE', str(tmp_path / 'host1'))
  dataset.forget(cfg)  # A fresh process on host 1.
  assert labels() == [1, 1, 4]
