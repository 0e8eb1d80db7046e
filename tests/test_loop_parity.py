"""The training loop between the steps, against the official trainer's: validation cadence, the
EMA at evaluation, steps per epoch and the partial last batch, the train-mode DCG passes."""

import csv

from data_helpers import aptos_subset, data_cfg
import numpy as np
import pytest
from PIL import Image

import jax

from configs import aptos, default, demo as demo_config, isic
from diffmic_jax import data, evaluate, parallel, train, train_state
from diffmic_jax.data.normalize import normalize
from diffmic_jax.data.preprocess import center_square


def test_validation_after_the_official_epochs():
  # Officially `epoch % validation_freq == 0 or epoch + 1 == n_epochs` on 0-based epochs: after
  # joint epochs 1, 11, 21 and the last; here also after the DCG pre-training.
  pre, spe, every = 30, 3, 10
  total = pre + 25 * spe
  steps = [s for s in range(1, total + 1) if train.validates(s, pre, total, spe, every)]
  assert steps == [pre, pre + spe, pre + 11 * spe, pre + 21 * spe, total]


def test_official_recipes_evaluate_the_raw_params():
  # The official code keeps an EMA and never evaluates it.
  for config in (default.get_config(), aptos.get_config(), isic.get_config()):
    assert not evaluate.uses_ema(config)


@pytest.fixture(scope='module')
def demo(demo_build):
  return demo_build


def test_epochs_end_with_the_partial_batch(demo):
  """ceil(n / B) batches per epoch, the last n mod B, each example once per epoch (the official
  DataLoader keeps `drop_last=False`); the next epoch starts a new shuffle with a whole batch."""
  it = data.make_train_iterator(demo, image_size=28, global_batch_size=64, seed=0,
                                partial_last_batch=True)
  epochs = [[next(it) for _ in range(17)] for _ in range(2)]  # 1,080 = 16 x 64 + 56.
  for batches in epochs:
    assert [len(b['label']) for b in batches] == [64] * 16 + [56]
    labels = np.concatenate([b['label'] for b in batches])
    assert np.bincount(labels).tolist() == data.class_counts(demo, 'train')
    images = np.concatenate([b['image'] for b in batches]).reshape(1080, -1)
    assert len({row.tobytes() for row in images}) > 1000  # Augmented copies of 1,080 images.
  assert not np.array_equal(epochs[0][0]['label'], epochs[1][0]['label'])
  with pytest.raises(ValueError, match='one process'):
    data.make_train_iterator(demo, image_size=28, global_batch_size=64, seed=0, process_count=2,
                             partial_last_batch=True)



def test_official_dcg_passes_move_only_the_running_statistics(demo):
  """`train.official_dcg_passes`: train-mode DCG forwards over the validation split (in order,
  padding dropped, batches of train.batch_size) and over one augmented train epoch; the weights,
  the optimizer state and the training batches that follow are untouched."""
  config = demo_config.get_config('smoke')
  config.data = demo
  config.train.batch_size = 64
  models = train_state.build_models(config, steps_per_epoch=17)
  state = train_state.init_state(models, jax.random.key(0), config.image_size)
  mesh = parallel.make_mesh()
  flat = lambda tree: jax.tree.leaves(jax.device_get(tree))

  # Reference: the validation images (120: batches of 64 and 56), one train-mode apply each.
  stats = state.dcg.batch_stats
  for x in data.make_eval_iterator(demo, 'validation', image_size=28, global_batch_size=64):
    _, upd = models.dcg.apply({'params': state.dcg.params, 'batch_stats': stats},
                              normalize(x['image'][x['mask']]), train=True, mutable=['batch_stats'])
    stats = upd['batch_stats']
  before = jax.device_get(state)
  after = train.official_dcg_passes(config, models, mesh, state, ('validation',))
  for a, b in zip(flat(after.dcg.batch_stats), flat(stats)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert any(not np.allclose(a, b) for a, b in zip(flat(after.dcg.batch_stats),
                                                   flat(before.dcg.batch_stats)))
  for a, b in zip(flat((after.dcg.params, after.dcg.opt_state, after.eps)),
                  flat((before.dcg.params, before.dcg.opt_state, before.eps))):
    np.testing.assert_array_equal(a, b)

  # The train epoch reads its own shuffle: the training iterator's batches do not move.
  both = train.official_dcg_passes(config, models, mesh, after, ('train', 'validation'))
  assert any(not np.allclose(a, b) for a, b in zip(flat(both.dcg.batch_stats),
                                                   flat(after.dcg.batch_stats)))
  it = data.make_train_iterator(demo, image_size=28, global_batch_size=64, seed=config.seed,
                                partial_last_batch=True)
  first = next(it)['label']
  again = data.make_train_iterator(demo, image_size=28, global_batch_size=64,
                                   seed=config.seed + train._PASS_SEED, partial_last_batch=True)
  assert not np.array_equal(first, next(again)['label'])


def test_builds_store_the_official_loaders_pixels(data_root, tmp_path):
  """By default a build stores what the official loader computes each epoch from the original
  file: CropCenterSquare, then PIL bilinear Resize, kept losslessly."""
  root = aptos_subset(data_root, tmp_path / 'aptos', per_split=2)
  cfg = data_cfg(name='image_folder', builder_config='default', manual_dir=str(root),
                 data_dir=str(tmp_path / 'tfds'), stored_size=32)
  data.prepare(cfg, num_classes=5)
  it = data.make_eval_iterator(cfg, 'test', image_size=32, global_batch_size=2)
  stored = next(iter(it))['image']
  with open(root / 'labels.csv', newline='') as f:
    files = [r['file'] for r in csv.DictReader(f) if r['split'] == 'test']
  for got, name in zip(stored, files):
    image = center_square(Image.open(root / name).convert('RGB'))
    np.testing.assert_array_equal(got, np.asarray(image.resize((32, 32), Image.BILINEAR)))
