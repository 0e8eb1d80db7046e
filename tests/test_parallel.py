"""Data parallelism: the sharded steps on 8 devices equal the 1-device steps on the same batch."""

import dataclasses

import jax
import numpy as np
import optax
import pytest

from configs import demo
from diffmic_jax import parallel, train, train_state


@pytest.fixture(scope='module')
def setup():
  config = demo.get_config('smoke')
  models = train_state.build_models(config, steps_per_epoch=3)
  npz = np.load(demo.__file__.replace('configs/demo.py', 'diffmic_jax/data/demo/retinamnist.npz'))
  # 8 images per device: with 2 per device the sharded gradient of the encoder's first block is
  # 2.6% from a float64 run (1 device: 4e-6); with 8 per device, 5e-6.
  batch = {'image': npz['train_images'][:64], 'label': npz['train_labels'][:64, 0].astype(np.int32)}
  return config, models, batch


def _run(config, models, batch, devices, joint_steps=2):
  mesh = parallel.make_mesh(devices)
  state = train.initial_state(config, models, mesh)
  pretrain, joint = train.compiled_steps(models, mesh)
  g = parallel.global_batch(batch, mesh)
  state, m = pretrain(state, g)
  metrics = [m]
  for i in range(joint_steps):
    state, m = joint(state, g, jax.random.key(7 + i))
    metrics.append(m)
  return jax.device_get((state, metrics))


def _assert_metrics_equal(one, eight, keys=None, rtol=1e-5):
  for a, b in zip(one, eight):
    for k in keys or a:
      np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=1e-6, err_msg=k)


@pytest.mark.slow
def test_eight_devices_equal_one_parameters(setup):
  # One DCG step, then one joint step, with plain SGD: an update is lr x gradient, so equal
  # parameters mean equal gradients. Adam divides by sqrt(v), which turns float noise in gradients
  # that are 0 in exact arithmetic (a bias feeding a BatchNorm) into lr-sized steps; and chaining
  # many updates of this tiny, BatchNorm-heavy net amplifies float noise (loss 1e-7 apart after
  # one update, 8e-4 after two). Neither says anything about the sharding, so: one update each.
  # The ROI choice is a top-k over near-tied saliency in an untrained net: a float-noise flip picks
  # another tile. Taking all 16 cells of the 4x4 grid makes the (order-free) attention pool exact.
  config, _, batch = setup
  config = config.copy_and_resolve_references()
  config.model.num_rois = 16
  models = train_state.build_models(config, steps_per_epoch=3)
  sgd = dataclasses.replace(models, dcg_tx=optax.sgd(0.05), eps_tx=optax.sgd(0.05))
  assert jax.device_count() == 8, 'tests/conftest.py forces 8 CPU devices'
  one = _run(config, sgd, batch, jax.devices()[:1], joint_steps=1)
  eight = _run(config, sgd, batch, jax.devices(), joint_steps=1)
  # How far float noise alone moves this tiny net: the same 1-device run with the lowest bit of one
  # uint8 pixel flipped. Its BatchNorm-heavy trunks amplify input changes (that flip moves the
  # epsilon encoder's BatchNorm updates by up to 4e-3 and the DCG local stream's by 1.1e-2), so
  # reduction-order rounding that differs between 1 and 8 devices can exceed the fixed bounds
  # below for reasons that have nothing to do with the sharding. Each bound is the fixed one or
  # twice this run's own sensitivity, whichever is larger; the sharding bugs this test exists for
  # move updates by 100-800%.
  nudged = dict(batch, image=np.array(batch['image']))
  nudged['image'][0, 0, 0, 0] ^= 1
  noise = _run(config, sgd, nudged, jax.devices()[:1], joint_steps=1)
  _assert_metrics_equal(one[1], eight[1], ['dcg_ce'])
  _assert_metrics_equal(one[1][1:], eight[1][1:], ['loss', 'mse', 'mmd_global', 'mmd_local'])
  # The norm sums ~10^4 squared float32 gradients reduced in another order: 1.3e-5 apart here.
  norm_noise = abs(noise[1][1]['grad_norm'] / one[1][1]['grad_norm'] - 1)
  _assert_metrics_equal(one[1][1:], eight[1][1:], ['grad_norm'], rtol=max(1e-4, 2 * norm_noise))
  # Each parameter's update (new - initial) must agree. Per-device BatchNorm statistics, local
  # (un-reduced) gradients or an 8x sum put them 100-800% apart; float32 order, ~1e-5.
  init = jax.device_get(train.initial_state(config, sgd, parallel.make_mesh(jax.devices()[:1])))
  total_diff = total = total_noise = 0.0
  params = lambda state: jax.tree.leaves(state.dcg.params) + jax.tree.leaves(state.eps.params)
  for (path, a), b, n, p0 in zip(jax.tree_util.tree_leaves_with_path(one[0].dcg.params)
                                 + jax.tree_util.tree_leaves_with_path(one[0].eps.params),
                                 params(eight[0]), params(noise[0]), params(init)):
    u1, u8, un = np.asarray(a) - p0, np.asarray(b) - p0, np.asarray(n) - p0
    diff, size, leaf_noise = np.linalg.norm(u1 - u8), np.linalg.norm(u1), np.linalg.norm(u1 - un)
    assert diff <= max(1e-3 * size, 2 * leaf_noise) + 1e-6, (
        jax.tree_util.keystr(path), diff, size, leaf_noise)
    total_diff, total = total_diff + diff**2, total + size**2
    total_noise += leaf_noise**2
  assert np.sqrt(total_diff) <= max(1e-4 * np.sqrt(total), 2 * np.sqrt(total_noise)), (
      np.sqrt(total_diff), np.sqrt(total), np.sqrt(total_noise))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(one[0].eps.batch_stats),
                          jax.tree.leaves(eight[0].eps.batch_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))


def test_batch_must_split_over_devices():
  mesh = parallel.make_mesh()
  with pytest.raises(ValueError, match='multiple of the device count 8'):
    parallel.check_batch_size(12, mesh)
