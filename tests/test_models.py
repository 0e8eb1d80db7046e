"""Shapes, parameter counts and the ROI mechanics of the Linen modules."""

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest
from PIL import Image

from diffmic_jax.models import DCG, EpsilonNet, backbone, conv, dcg, priors


def _count(variables):
  return sum(x.size for x in jax.tree.leaves(variables['params']))


@pytest.mark.parametrize('arch,expected', [('resnet18', 11_689_512), ('resnet50', 25_557_032)])
def test_resnet_param_counts_equal_torchvision(arch, expected):
  model = backbone(arch, output='logits', num_classes=1000)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  assert _count(shapes) == expected


def test_official_model_sizes():
  # diffmic.md section 8: eps_theta 108.44 M and DCG 47.56 M parameters at K = 5.
  eps = EpsilonNet(5)
  shapes = jax.eval_shape(lambda: eps.init(
      jax.random.key(0), jnp.zeros((1, 224, 224, 3)), jnp.zeros((1, 5)), jnp.zeros((1, 5)),
      jnp.zeros((1,), jnp.int32)))
  assert _count(shapes) == 108_436_037
  assert shapes['params']['layers_0']['embed']['embedding'].shape == (1001, 6144)
  guide = DCG(5)
  shapes = jax.eval_shape(lambda: guide.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  assert _count(shapes) == 47_560_960


@pytest.mark.parametrize('size,small_stem,grid', [(224, False, 7), (28, True, 4), (64, True, 8)])
def test_resnet_map_grid(size, small_stem, grid):
  model = backbone('resnet18', output='map', small_stem=small_stem, width=8)
  out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0),
                                                      jnp.zeros((2, size, size, 3)))[0])
  assert out.shape == (2, grid, grid, 64)


def _real_image(data_root, size):
  path = sorted((data_root / 'ham10000_224' / 'images').glob('*.jpg'))[0]
  img = np.asarray(Image.open(path).convert('RGB').resize((size, size)), np.float32) / 255.0
  return jnp.asarray((img - 0.45) / 0.25)[None]


@pytest.mark.parametrize('size,small_stem', [(224, False), (32, True)])
def test_dcg_forward(data_root, size, small_stem):
  model = DCG(7, backbone='resnet18', small_stem=small_stem, width=8)
  x = jnp.concatenate([_real_image(data_root, size)] * 2)
  variables = model.init(jax.random.key(0), x)
  out, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  grid = 7 if size == 224 else 4
  tile = size // grid
  assert out['logits'].shape == (2, 7)
  assert out['saliency'].shape == (2, grid, grid, 7)
  assert out['roi_boxes'].shape == (2, 6, 4)
  np.testing.assert_allclose(out['attention'].sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(out['logits'], 0.5 * (out['logits_global'] + out['logits_local']),
                             rtol=1e-5, atol=1e-6)
  boxes = np.asarray(out['roi_boxes'])
  assert np.all(boxes[..., 2] - boxes[..., 0] == tile) and np.all(boxes[..., 3] - boxes[..., 1] == tile)
  assert len({tuple(b) for b in boxes[0]}) == 6  # six distinct cells
  assert jax.tree.structure(updates['batch_stats']) == jax.tree.structure(variables['batch_stats'])
  for p in priors(out):
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)


def test_crop_returns_the_tiles_under_the_top_cells():
  # A 7x7 saliency map whose top cells are known; the crops must be exactly those 32px tiles.
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 224, 224, 3)).astype(np.float32)
  sal = np.zeros((2, 7, 7, 5), np.float32)
  hot = [[(0, 0), (3, 4), (6, 6), (2, 1), (5, 0), (1, 5)], [(6, 0), (0, 6), (4, 4), (1, 1), (2, 3), (3, 2)]]
  for b, cells in enumerate(hot):
    for rank, (r, c) in enumerate(cells):
      sal[b, r, c, :] = 10.0 - rank  # every class agrees, strictly decreasing
  idx = dcg.select_rois(jnp.asarray(sal), 6)
  tiles, boxes = dcg.crop_tiles(jnp.asarray(images), idx, (7, 7))
  for b, cells in enumerate(hot):
    for rank, (r, c) in enumerate(cells):
      np.testing.assert_array_equal(tiles[b, rank], images[b, r * 32:(r + 1) * 32, c * 32:(c + 1) * 32])
      assert tuple(boxes[b, rank]) == (r * 32, c * 32, (r + 1) * 32, (c + 1) * 32)


def test_roi_selection_normalises_each_class_map():
  # Class 0 has huge values in one cell, class 1 small values elsewhere: after min-max
  # normalisation both count equally, so the official sum picks a cell hot in both.
  sal = np.zeros((1, 3, 3, 2), np.float32)
  sal[0, 0, 0, 0] = 1000.0
  sal[0, 1, 1, 0] = 900.0
  sal[0, 1, 1, 1] = 0.5
  sal[0, 2, 2, 1] = 1.0
  idx = np.asarray(dcg.select_rois(jnp.asarray(sal), 2))[0]
  assert list(idx) == [4, 0] or list(idx) == [4, 8]
  assert idx[0] == 4  # 0.9 + 0.5 beats 1.0 + 0 and 0 + 1.0
  # A constant class map must not poison the sum with NaN.
  const = jnp.ones((1, 3, 3, 2))
  assert np.all(np.isfinite(np.asarray(dcg.select_rois(const, 2))))


def test_crop_first_channel_option():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 32, 32, 3)), jnp.float32)
  model = DCG(3, backbone='resnet_tiny', small_stem=True, width=4, crop_first_channel=True, num_rois=2)
  variables = model.init(jax.random.key(0), x)
  out, state = model.apply(variables, x, capture_intermediates=lambda m, _: m.name == 'local_net',
                           mutable=['intermediates'])
  assert out['logits'].shape == (1, 3)
  # The local stream saw grey tiles: all three input channels equal channel 0.
  tiles, _ = dcg.crop_tiles(jnp.repeat(x[..., :1], 3, -1), dcg.select_rois(out['saliency'], 2),
                            out['saliency'].shape[1:3])
  assert np.allclose(tiles[..., 0], tiles[..., 2])


def test_top_t_percent_aggregation():
  sal = jnp.arange(2 * 2 * 2 * 1, dtype=jnp.float32).reshape(2, 2, 2, 1)
  np.testing.assert_allclose(dcg.top_t_percent_mean(sal, 1.0)[:, 0], [1.5, 5.5])
  np.testing.assert_allclose(dcg.top_t_percent_mean(sal, 0.5)[:, 0], [2.5, 6.5])


@pytest.mark.parametrize('size,small_stem,prior_input', [(224, False, 'fused'), (28, True, 'global_local')])
def test_epsilon_net_forward_and_encode_head_split(size, small_stem, prior_input):
  k, b = 5, 3
  model = EpsilonNet(k, num_timesteps=50, feature_dim=32, small_stem=small_stem, width=8,
                     prior_input=prior_input)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(b, size, size, 3)), jnp.float32)
  y_t = jnp.ones((b, k))
  pr = jnp.full((b, k), 0.2) if prior_input == 'fused' else (jnp.full((b, k), 0.2),) * 2
  t = jnp.array([0, 10, 49])
  variables = model.init(jax.random.key(0), x, y_t, pr, t)
  eps = model.apply(variables, x, y_t, pr, t)
  assert eps.shape == (b, k)
  feats = model.apply(variables, x, method=EpsilonNet.encode)
  assert feats.shape == (b, 32)
  np.testing.assert_allclose(model.apply(variables, feats, y_t, pr, t, method=EpsilonNet.head), eps,
                             rtol=1e-5, atol=1e-6)
  emb = variables['params']['layers_0']['embed']['embedding']
  assert emb.shape == (51, 32) and float(emb.min()) >= 0.0 and float(emb.max()) <= 1.0
  with pytest.raises(ValueError, match='prior'):
    model.apply(variables, x, y_t, (pr,) * 3 if prior_input == 'fused' else pr[0], t)


# Each case exercises one of conv.CpuConv's forms: 1x1 as a matmul (strided or not), 3x3 with an
# output of <= 4 pixels as patches-times-kernel, and XLA's convolution otherwise.
@pytest.mark.parametrize('kernel,stride,size', [
    (1, 1, 5), (1, 2, 7), (3, 1, 2), (3, 2, 4), (3, 1, 1), (3, 2, 2), (3, 1, 6), (3, 2, 9),
    (7, 2, 11)])
def test_conv_matches_flax_conv_values_and_gradients(kernel, stride, size):
  pad = (kernel - 1) // 2
  ours = conv.conv(8, kernel, stride, cpu_tuning=True)
  ref = nn.Conv(8, (kernel, kernel), (stride, stride), padding=[(pad, pad)] * 2, use_bias=False,
                kernel_init=conv.kaiming_fan_out)
  x = jax.random.normal(jax.random.key(1), (3, size, size, 5))
  v_ours, v_ref = ours.init(jax.random.key(0), x), ref.init(jax.random.key(0), x)
  np.testing.assert_array_equal(v_ours['params']['kernel'], v_ref['params']['kernel'])
  y_ours, y_ref = ours.apply(v_ours, x), ref.apply(v_ref, x)
  assert y_ours.shape == y_ref.shape
  np.testing.assert_allclose(y_ours, y_ref, rtol=1e-5, atol=1e-5)
  cot = jax.random.normal(jax.random.key(2), y_ref.shape)
  grad = lambda m: jax.grad(lambda v, x: jnp.vdot(m.apply(v, x), cot), argnums=(0, 1))
  (gv_ours, gx_ours), (gv_ref, gx_ref) = grad(ours)(v_ours, x), grad(ref)(v_ref, x)
  np.testing.assert_allclose(gv_ours['params']['kernel'], gv_ref['params']['kernel'], rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(gx_ours, gx_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('size', [1, 2, 7, 12])
def test_stem_max_pool_matches_reduce_window(size):
  pool = lambda x: nn.max_pool(x, (3, 3), (2, 2), padding=[(1, 1), (1, 1)])
  # After the stem's ReLU, as in the ResNet: zeros tie, positive values do not.
  x = jax.random.normal(jax.random.key(0), (2, size, size, 4))
  ours = lambda x: conv.max_pool_3x3_s2(x, cpu_tuning=True)
  np.testing.assert_array_equal(ours(jax.nn.relu(x)), pool(jax.nn.relu(x)))
  cot = jax.random.normal(jax.random.key(1), pool(x).shape)
  grad = lambda p: jax.grad(lambda x: jnp.vdot(p(jax.nn.relu(x)), cot))(x)
  np.testing.assert_array_equal(grad(ours), grad(pool))


@pytest.mark.parametrize('arch,small_stem', [('resnet_tiny', False), ('resnet50', True)])
def test_cpu_tuning_keeps_parameters_and_values(arch, small_stem):
  """The CPU forms are a faster computation of the same model: same variables, same outputs."""
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  plain, tuned = (backbone(arch, output='map', small_stem=small_stem, width=4, cpu_tuning=c)
                  for c in (False, True))
  assert isinstance(conv.conv(4, 3), nn.Conv) and isinstance(conv.conv(4, 3, cpu_tuning=True),
                                                             conv.CpuConv)
  v_plain, v_tuned = plain.init(jax.random.key(1), x), tuned.init(jax.random.key(1), x)
  jax.tree.map(np.testing.assert_array_equal, v_plain, v_tuned)
  np.testing.assert_allclose(tuned.apply(v_plain, x), plain.apply(v_plain, x), rtol=1e-4, atol=1e-4)


def test_cpu_tuning_reaches_every_trunk_only_when_asked_for():
  from configs import demo
  from diffmic_jax import train_state
  config = demo.get_config('smoke')
  x = jnp.zeros((2, 28, 28, 3))
  for asked in (False, True):
    config.cpu_tuning = asked
    models = train_state.build_models(config, steps_per_epoch=3)
    used = asked and jax.default_backend() == 'cpu'
    called = []

    def record(next_fun, args, kwargs, context):
      called.append((context.module.scope.path, type(context.module)))
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      models.dcg.init(jax.random.key(0), x)
      models.eps.init(jax.random.key(0), x, jnp.zeros((2, 5)), jnp.zeros((2, 5)),
                      jnp.zeros((2,), jnp.int32))
    convs = {path: cls for path, cls in called if cls in (nn.Conv, conv.CpuConv)}
    trunks = {path[0] for path in convs}
    assert trunks >= {'global_net', 'local_net', 'encoder'}, trunks
    assert set(convs.values()) == {conv.CpuConv if used else nn.Conv}


def test_heads_start_from_torch_default_initial_values():
  """The epsilon network's linear layers and the DCG's heads start as torch.nn.Linear / Conv2d do:
  weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)), not lecun_normal with zero biases."""
  x = jnp.zeros((2, 64, 64, 3))
  eps = EpsilonNet(5, num_timesteps=50, feature_dim=256, backbone='resnet_tiny', width=8)
  y = jnp.zeros((2, 5))
  eps_params = eps.init(jax.random.key(0), x, y, y, jnp.zeros((2,), jnp.int32))['params']
  dcg_params = DCG(5, backbone='resnet_tiny', width=8).init(jax.random.key(1), x)['params']
  layers = [eps_params['project'], eps_params['out'],
            *(eps_params[f'layers_{i}']['linear'] for i in range(3)),
            dcg_params['saliency_conv'], dcg_params['local_head'],
            *(dcg_params['attention'][n] for n in 'UVw')]
  for layer in layers:
    kernel = np.asarray(layer['kernel'])
    bound = 1 / np.sqrt(np.prod(kernel.shape[:-1]))
    leaves = [kernel] + ([np.asarray(layer['bias'])] if 'bias' in layer else [])
    for leaf in leaves:
      assert np.abs(leaf).max() <= bound
      if leaf.size >= 256:  # Uniform: std bound / sqrt(3).
        np.testing.assert_allclose(leaf.std(), bound / np.sqrt(3), rtol=0.1)
    if 'bias' in layer:
      assert np.abs(leaf).max() > 0.5 * bound


@pytest.mark.slow
@pytest.mark.parametrize('arch,remat', [('resnet50', 'conv_outputs'), ('resnet_tiny', 'blocks')])
def test_remat_keeps_values_gradients_and_statistics(arch, remat):
  """Rematerialised blocks recompute the same forward: same loss, gradients and statistics."""
  from diffmic_jax.models import resnet
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  results = []
  for r in ('none', remat):
    net = backbone(arch, output='pooled', small_stem=True, width=4, cpu_tuning=True, remat=r)
    variables = net.init(jax.random.key(1), x)

    def loss(params):
      y, upd = net.apply({**variables, 'params': params}, x, True, mutable=['batch_stats'])
      return jnp.sum(jnp.sin(y)), upd

    results.append(jax.jit(jax.value_and_grad(loss, has_aux=True))(variables['params']))
  # Separately compiled programs fuse differently: agreement to float32 rounding.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), *results)
  with pytest.raises(ValueError, match='remat'):
    resnet.ResNet18(remat='stages').init(jax.random.key(0), x)
