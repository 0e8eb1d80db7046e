"""The grain pipelines on the embedded demo set and on a few real APTOS images.

Checks shapes, dtypes and ranges; seeded augmentation; per-process shards; resuming from an
iterator state (directly and through Orbax); eval padding that counts every example once.
"""

import hashlib
import os

from data_helpers import aptos_subset, demo_cfg, data_cfg
import grain
import numpy as np
import pytest

from diffmic_jax import data


@pytest.fixture(scope='module')
def demo(demo_build):
  return demo_build


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_demo_build_counts_and_idempotent(demo):
  assert [data.num_examples(demo, s) for s in ('train', 'validation', 'test')] == [1080, 120, 400]
  assert data.class_counts(demo, 'train') == [486, 128, 206, 194, 66]
  info = os.path.join(data.dataset.build_dir(demo), 'dataset_info.json')
  before = os.stat(info).st_mtime_ns
  data.prepare(demo)
  assert os.stat(info).st_mtime_ns == before


def test_train_batches_shapes_dtypes_ranges(demo):
  batch = next(data.make_train_iterator(demo, image_size=28, global_batch_size=16, seed=0))
  assert batch['image'].shape == (16, 28, 28, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].shape == (16,) and batch['label'].dtype == np.int32
  assert 0 <= batch['label'].min() and batch['label'].max() < 5
  assert batch['image'].max() > 100  # Real fundus pixels, not padding.
  x = np.asarray(data.normalize(batch['image']))
  assert x.dtype == np.float32 and -2.2 < x.min() and x.max() < 2.7
  assert np.allclose(np.asarray(data.normalize(np.full((1, 3), 255, np.uint8)))[0],
                     (1 - np.array(data.IMAGENET_MEAN)) / np.array(data.IMAGENET_STD), atol=1e-6)


def test_resize_at_read(demo):
  batch = next(data.make_train_iterator(demo, image_size=32, global_batch_size=4, seed=0))
  assert batch['image'].shape == (4, 32, 32, 3)


def test_augmentation_deterministic_for_a_seed(demo):
  kw = dict(image_size=28, global_batch_size=16)
  a = _take(data.make_train_iterator(demo, seed=3, **kw), 3)
  b = _take(data.make_train_iterator(demo, seed=3, **kw), 3)
  c = _take(data.make_train_iterator(demo, seed=4, **kw), 3)
  assert _same(a, b) and not _same(a, c)
  plain = demo_cfg(demo.data_dir, horizontal_flip=False, vertical_flip=False, rotation_degrees=0.)
  d = _take(data.make_train_iterator(plain, seed=3, **kw), 3)
  assert all(np.array_equal(x['label'], y['label']) for x, y in zip(a, d))  # Same order.
  assert not all(np.array_equal(x['image'], y['image']) for x, y in zip(a, d))


def test_epochs_reshuffle(demo):
  cfg = demo_cfg(demo.data_dir, train_split='validation')  # 120 examples, 15 batches of 8.
  it = data.make_train_iterator(cfg, image_size=28, global_batch_size=8, seed=0)
  first, second = _take(it, 15), _take(it, 15)
  labels = lambda bs: np.concatenate([b['label'] for b in bs])
  assert sorted(labels(first)) == sorted(labels(second))
  assert not np.array_equal(labels(first), labels(second))


def test_process_shards_are_disjoint(demo):
  plain = demo_cfg(demo.data_dir, train_split='validation', horizontal_flip=False,
                   vertical_flip=False, rotation_degrees=0.)
  seen = []
  for p in range(2):
    it = data.make_train_iterator(plain, image_size=28, global_batch_size=16, seed=0,
                                  process_index=p, process_count=2)
    batches = _take(it, 60 // 8)  # One epoch of this process's 60 examples, 8 per batch.
    assert batches[0]['image'].shape[0] == 8
    seen.append({hashlib.md5(im.tobytes()).hexdigest() for b in batches for im in b['image']})
  assert not seen[0] & seen[1]
  assert len(seen[0] | seen[1]) >= 110  # 112 read; identical images would merge.


def test_resume_from_state(demo):
  kw = dict(image_size=28, global_batch_size=16, seed=7)
  it = data.make_train_iterator(demo, **kw)
  _take(it, 2)
  state = it.get_state()
  expected = _take(it, 3)
  resumed = data.make_train_iterator(demo, **kw)
  resumed.set_state(state)
  assert _same(expected, _take(resumed, 3))


def test_resume_through_orbax(demo, tmp_path):
  ocp = pytest.importorskip('orbax.checkpoint')
  kw = dict(image_size=28, global_batch_size=16, seed=1)
  it = data.make_train_iterator(demo, **kw)
  _take(it, 3)
  with ocp.CheckpointManager(tmp_path / 'ckpt', item_names=('data',)) as mngr:
    mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    expected = _take(it, 2)
    resumed = data.make_train_iterator(demo, **kw)
    mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
  assert _same(expected, _take(resumed, 2))


def test_class_balanced_sampling(demo):
  cfg = demo_cfg(demo.data_dir, class_balanced=True)
  it = data.make_train_iterator(cfg, image_size=28, global_batch_size=50, seed=0)
  counts = np.bincount(np.concatenate([b['label'] for b in _take(it, 20)]), minlength=5)
  assert counts.min() > 150 and counts.max() < 250  # Uniform: 200 each of 1000.


@pytest.mark.parametrize('split,batch', [('validation', 32), ('test', 48)])
def test_eval_padding_counts_each_example_once(demo, split, batch):
  n = data.num_examples(demo, split)
  indices, batches = [], []
  for p in range(2):
    ds = data.make_eval_iterator(demo, split, image_size=28, global_batch_size=batch,
                                 process_index=p, process_count=2)
    got = list(ds)
    batches.append(len(got))
    for b in got:
      assert b['image'].shape == (batch // 2, 28, 28, 3) and b['mask'].dtype == bool
      assert (b['index'][~b['mask']] == -1).all() and (b['image'][~b['mask']] == 0).all()
      indices.extend(b['index'][b['mask']].tolist())
  assert batches[0] == batches[1] == -(-n // batch)
  assert sorted(indices) == list(range(n))


def test_eval_is_not_augmented(demo):
  a = next(iter(data.make_eval_iterator(demo, 'test', image_size=28, global_batch_size=8)))
  b = next(iter(data.make_eval_iterator(demo, 'test', image_size=28, global_batch_size=8)))
  assert np.array_equal(a['image'], b['image']) and a['mask'].all()


@pytest.fixture(scope='module')
def aptos_folder(data_root, tmp_path_factory):
  root = aptos_subset(data_root, tmp_path_factory.mktemp('aptos_subset'))
  cfg = data_cfg(name='image_folder', builder_config='default', manual_dir=str(root),
                 data_dir=str(tmp_path_factory.mktemp('tfds_aptos')))
  data.prepare(cfg, num_classes=5)
  return cfg


def test_real_images_224_stored_read_at_64(aptos_folder):
  assert [data.num_examples(aptos_folder, s) for s in ('train', 'validation', 'test')] == [6, 6, 12]
  assert len(data.class_counts(aptos_folder, 'test')) == 5
  batch = next(data.make_train_iterator(aptos_folder, image_size=64, global_batch_size=4, seed=0))
  assert batch['image'].shape == (4, 64, 64, 3) and batch['image'].mean() > 10


@pytest.mark.slow
def test_worker_processes(aptos_folder):
  cfg = data_cfg(**{**aptos_folder.to_dict(), 'num_workers': 2})
  it = data.make_train_iterator(cfg, image_size=64, global_batch_size=4, seed=0)
  batches = _take(it, 3)
  assert all(b['image'].shape == (4, 64, 64, 3) for b in batches)
  state = it.get_state()
  expected = _take(it, 2)
  resumed = data.make_train_iterator(cfg, image_size=64, global_batch_size=4, seed=0)
  resumed.set_state(state)
  assert _same(expected, _take(resumed, 2))
