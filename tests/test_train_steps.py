"""The jitted training steps: which gradients flow where, and the encoder-once shortcut."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import demo
from diffmic_jax import losses, train_state, train_steps
from diffmic_jax.data.normalize import normalize
from diffmic_jax.models import priors as dcg_priors


@pytest.fixture(scope='module')
def setup():
  config = demo.get_config('smoke')
  models = train_state.build_models(config, steps_per_epoch=3)
  state = train_state.init_state(models, jax.random.key(0), config.image_size)
  npz = np.load(demo.__file__.replace('configs/demo.py', 'diffmic_jax/data/demo/retinamnist.npz'))
  batch = {'image': npz['train_images'][:8], 'label': npz['train_labels'][:8, 0].astype(np.int32)}
  return config, models, state, batch


def _flat(tree):
  return traverse_util.flatten_dict(tree, sep='/')


def _eps_grads(models, state, batch, key, stop_gradient=True):
  images = normalize(batch['image'])
  out = models.dcg.apply(state.dcg.variables(), images, train=False)
  pri = dcg_priors(out)
  if stop_gradient:
    pri = jax.lax.stop_gradient(pri)
  return jax.jit(jax.grad(lambda p: train_steps.diffusion_loss(models, p, state.eps.batch_stats, images,
                                                       batch['label'], pri, key)[0]))(state.eps.params)


def test_gradients_reach_every_eps_parameter(setup):
  _, models, state, batch = setup
  grads = _flat(_eps_grads(models, state, batch, jax.random.key(1)))
  dead = [k for k, g in grads.items() if not np.any(np.asarray(g) != 0)]
  assert not dead, f'no gradient reaches {dead}'


def test_gradients_reach_every_dcg_parameter_from_its_ce(setup):
  _, models, state, batch = setup
  images = normalize(batch['image'])

  def ce(params):
    out, _ = models.dcg.apply({'params': params, 'batch_stats': state.dcg.batch_stats}, images,
                              train=True, mutable=['batch_stats'])
    return jnp.mean(-jax.nn.log_softmax(out['logits'])[jnp.arange(8), batch['label']])

  dead = [k for k, g in _flat(jax.jit(jax.grad(ce))(state.dcg.params)).items() if not np.any(np.asarray(g) != 0)]
  assert not dead, f'no gradient reaches {dead}'


def test_no_diffusion_gradient_reaches_the_dcg(setup):
  _, models, state, batch = setup
  images = normalize(batch['image'])

  def loss_wrt_dcg(dcg_params, stop):
    out = models.dcg.apply({'params': dcg_params, 'batch_stats': state.dcg.batch_stats}, images)
    pri = dcg_priors(out)
    pri = jax.lax.stop_gradient(pri) if stop else pri
    return train_steps.diffusion_loss(models, state.eps.params, state.eps.batch_stats, images,
                                      batch['label'], pri, jax.random.key(2))[0]

  stopped = jax.jit(jax.grad(lambda p: loss_wrt_dcg(p, True)))(state.dcg.params)
  assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(stopped))
  # Without the stop-gradient the same loss does reach the DCG: the check above can fail.
  flowing = jax.jit(jax.grad(lambda p: loss_wrt_dcg(p, False)))(state.dcg.params)
  assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(flowing))


def test_encoder_once_equals_three_full_passes(setup):
  _, models, state, batch = setup
  images = normalize(batch['image'])
  out = models.dcg.apply(state.dcg.variables(), images)
  pri = jax.lax.stop_gradient(dcg_priors(out))
  key = jax.random.key(3)

  def three_passes(params):  # What the official code does: the whole network, three times.
    k_t, k_noise = jax.random.split(key)
    t = train_steps.antithetic_timesteps(k_t, 8, models.schedule.num_timesteps)
    noise = jax.random.normal(k_noise, (8, models.num_classes))
    y0 = jax.nn.one_hot(batch['label'], models.num_classes)
    stats, preds = state.eps.batch_stats, []
    for mean in pri:
      y_t = models.schedule.q_sample(y0, mean, t, noise)
      p, upd = models.eps.apply({'params': params, 'batch_stats': stats}, images, y_t, mean, t, True,
                                mutable=['batch_stats'])
      stats = upd['batch_stats']
      preds.append(p)
    return (losses.noise_mse(noise, preds[0]) + models.mmd_weight
            * (losses.rbf_mmd(noise, preds[1]) + losses.rbf_mmd(noise, preds[2])))

  want = _flat(jax.jit(jax.grad(three_passes))(state.eps.params))
  got = _flat(_eps_grads(models, state, batch, key))
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=2e-4, atol=1e-6, err_msg=k)


def test_joint_and_pretrain_steps_update_state(setup):
  _, models, state, batch = setup
  step = jax.jit(lambda s, b, k: train_steps.joint_step(models, s, b, k))
  first, _ = step(state, batch, jax.random.key(4))
  # The epsilon-network LR warms up from 0, so its params move from the second step on.
  assert float(models.eps_lr(0)) == 0.0
  new, metrics = step(first, batch, jax.random.key(5))
  assert int(new.step) == 2 and int(new.joint_steps) == 2
  for k in ('loss', 'mse', 'mmd_global', 'mmd_local', 'dcg_ce', 'grad_norm', 'eps_lr'):
    assert np.isfinite(float(metrics[k])), k
  np.testing.assert_allclose(metrics['loss'], metrics['mse'] + 0.5 * (metrics['mmd_global']
                                                                       + metrics['mmd_local']), rtol=1e-5)
  changed = lambda a, b: any(np.any(np.asarray(x) != np.asarray(y))
                             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert changed(new.dcg.params, state.dcg.params) and changed(new.eps.params, state.eps.params)
  assert changed(new.eps.batch_stats, state.eps.batch_stats)
  assert changed(new.ema_params, state.ema_params)
  pre = jax.jit(lambda s, b: train_steps.dcg_pretrain_step(models, s, b))
  new2, m2 = pre(state, batch)
  assert int(new2.step) == 1 and int(new2.joint_steps) == 0 and np.isfinite(float(m2['dcg_ce']))
  assert not changed(new2.eps.params, state.eps.params)


def test_y0_cross_entropy_is_the_official_add_ce_loss(setup):
  """With the true noise as the prediction, y0_tilde is the one-hot label, so the logits
  -(y0 - 1)^2 are 0 for the label and -1 elsewhere: CE = log(1 + (K - 1) / e) exactly."""
  _, models, _, batch = setup
  k, labels = models.num_classes, jnp.asarray(batch['label'])
  y0 = jax.nn.one_hot(labels, k)
  y_hat = jax.nn.softmax(jax.random.normal(jax.random.key(7), y0.shape))
  t = jnp.array([0, 10, 300, 600, 900, 999, 5, 500])
  noise = jax.random.normal(jax.random.key(8), y0.shape)
  y_t = models.schedule.q_sample(y0, y_hat, t, noise)
  ce = train_steps.y0_cross_entropy(models, y_t, y_hat, t, noise, labels)
  np.testing.assert_allclose(ce, np.log(1 + (k - 1) / np.e), rtol=1e-4)
  assert float(train_steps.y0_cross_entropy(models, y_t, y_hat, t, -noise, labels)) > float(ce)


def test_ce_weight_adds_the_term_to_the_loss(setup):
  import dataclasses
  _, models, state, batch = setup
  images = normalize(batch['image'])
  pri = jax.lax.stop_gradient(dcg_priors(models.dcg.apply(state.dcg.variables(), images)))

  def loss(m):
    return jax.jit(lambda: train_steps.diffusion_loss(m, state.eps.params, state.eps.batch_stats,
                                                      images, batch['label'], pri,
                                                      jax.random.key(9))[1][0])()

  off, on = loss(models), loss(dataclasses.replace(models, ce_weight=0.01))
  assert 'y0_ce' not in off and float(on['y0_ce']) > 0
  np.testing.assert_allclose(on['mse'], off['mse'], rtol=1e-6)
  np.testing.assert_allclose(on['loss'], off['loss'] + 0.01 * on['y0_ce'], rtol=1e-5)


def _loss_and_grads(models, state, batch, key):
  images = normalize(batch['image'])
  pri = jax.lax.stop_gradient(dcg_priors(models.dcg.apply(state.dcg.variables(), images)))
  fn = jax.value_and_grad(train_steps.diffusion_loss, argnums=1, has_aux=True)
  (_, (metrics, stats)), grads = jax.jit(lambda p: fn(models, p, state.eps.batch_stats, images,
                                                      batch['label'], pri, key))(state.eps.params)
  return metrics, stats, _flat(grads)


def _without_and_with(setup, **loss):
  """(metrics, batch stats, gradients) of one diffusion loss without and with the loss fields set."""
  _, models, state, batch = setup
  key = jax.random.key(10)
  return (_loss_and_grads(models, state, batch, key),
          _loss_and_grads(dataclasses.replace(models, **loss), state, batch, key))


def test_official_ce_term_sends_no_gradient_to_the_epsilon_network(setup):
  """Officially eps_theta is detached in y_0_reparam: the same gradient with the term or without."""
  (off, off_stats, off_grads), (on, on_stats, on_grads) = _without_and_with(setup, ce_weight=0.01)
  for k in off_grads:
    np.testing.assert_array_equal(on_grads[k], off_grads[k], err_msg=k)
  np.testing.assert_allclose(on['loss'], off['loss'] + 0.01 * on['y0_ce'], rtol=1e-5)
  # Its fourth train-mode pass moves the head's BatchNorm statistics once more, not the encoder's.
  on_stats, off_stats = _flat(on_stats), _flat(off_stats)
  head = [k for k in off_stats if k.startswith('norms_')]
  assert head and all(np.any(np.asarray(on_stats[k]) != np.asarray(off_stats[k])) for k in head)
  for k in off_stats:
    if not k.startswith('norms_'):
      np.testing.assert_array_equal(on_stats[k], off_stats[k], err_msg=k)


def test_eps_ce_weight_back_propagates_the_term(setup):
  (off, off_stats, off_grads), (on, on_stats, on_grads) = _without_and_with(setup, eps_ce_weight=0.01)
  np.testing.assert_allclose(on['loss'], off['loss'] + 0.01 * on['y0_ce'], rtol=1e-5)
  assert any(np.any(np.asarray(on_grads[k]) != np.asarray(off_grads[k])) for k in off_grads)
  for k, v in _flat(off_stats).items():
    np.testing.assert_array_equal(_flat(on_stats)[k], v, err_msg=k)


def test_drop_priors_replaces_whole_rows_by_the_uniform_or_another_images_prior():
  k = jax.random.split(jax.random.key(11), 3)
  priors = tuple(jax.nn.softmax(jax.random.normal(kk, (256, 5))) for kk in k)
  same = lambda a, b: np.all(np.isclose(np.asarray(a), np.asarray(b)), -1)
  out = train_steps.drop_priors(priors, jax.random.key(12), 0.3, 'uniform')
  dropped = same(out[0], 0.2)
  assert 0.2 < dropped.mean() < 0.4  # About 30% of 256 rows.
  for o, p in zip(out, priors):  # All three priors of a row go together; the rest stay.
    np.testing.assert_array_equal(same(o, 0.2), dropped)
    np.testing.assert_array_equal(np.asarray(o)[~dropped], np.asarray(p)[~dropped])
  out = train_steps.drop_priors(priors, jax.random.key(12), 1.0, 'shuffle')
  rows = {tuple(np.round(r, 6)) for r in np.asarray(priors[0])}
  assert {tuple(np.round(r, 6)) for r in np.asarray(out[0])} == rows  # A permutation of the batch.
  assert not same(out[0], priors[0]).all()
  np.testing.assert_array_equal(
      train_steps.drop_priors(priors, jax.random.key(12), 0.0, 'uniform')[2], priors[2])


@pytest.mark.slow
def test_prior_dropout_trains_against_the_replaced_prior(setup):
  """On: the joint step's noise loss is the loss given the uniform prior for the dropped images
  (all 8 at p = 0.999), not the loss given the DCG's priors. Off (0, the default) the step takes
  the official path, which the other tests and the golden parity tests pin."""
  _, models, state, batch = setup
  assert models.prior_dropout == 0.0
  key = jax.random.key(13)
  images = normalize(batch['image'])
  loss = jax.jit(lambda pri: train_steps.diffusion_loss(models, state.eps.params,
                                                        state.eps.batch_stats, images,
                                                        batch['label'], pri, key)[1][0])
  official = loss(jax.lax.stop_gradient(dcg_priors(models.dcg.apply(state.dcg.variables(), images))))
  uniform = loss((jnp.full((8, models.num_classes), 1 / models.num_classes),) * 3)
  on = dataclasses.replace(models, prior_dropout=0.999)
  _, metrics = jax.jit(lambda s, b, k: train_steps.joint_step(on, s, b, k))(state, batch, key)
  np.testing.assert_allclose(metrics['mse'], uniform['mse'], rtol=1e-5)
  assert abs(float(metrics['mse']) - float(official['mse'])) > 1e-4


def test_prior_weight_weights_each_images_noise_error_by_its_fed_prior(setup):
  """`loss.prior_weight` (DiffMIC-v2's weight): the noise MSE is the per-image mean squared error
  weighted by 1 + alpha (1 - the fused prior's probability of the label); 0 is the official loss."""
  _, models, state, batch = setup
  key = jax.random.key(5)
  images = normalize(batch['image'])
  pri = jax.lax.stop_gradient(dcg_priors(models.dcg.apply(state.dcg.variables(), images)))
  run = lambda m: jax.jit(lambda p: train_steps.diffusion_loss(
      m, state.eps.params, state.eps.batch_stats, images, batch['label'], p, key)[1][0])(pri)
  plain = run(models)
  weighted = run(dataclasses.replace(models, prior_weight=10.0))
  assert 'prior_weight_mean' not in plain
  w = 1 + 10 * (1 - np.take_along_axis(np.asarray(pri[0]), batch['label'][:, None], 1)[:, 0])
  np.testing.assert_allclose(weighted['prior_weight_mean'], w.mean(), rtol=1e-5)
  # Same noise and predictions: the weighted MSE lies strictly between min(w) and max(w) times
  # the plain one unless every weight is equal.
  assert w.min() * plain['mse'] < weighted['mse'] < w.max() * plain['mse']
  np.testing.assert_allclose(weighted['mmd_global'], plain['mmd_global'], rtol=1e-6)


def test_eps_encoder_from_dcg_copies_the_global_trunk(setup):
  _, models, state, batch = setup
  new = train_state.eps_encoder_from_dcg(state)
  for coll, src in (('params', new.dcg.params), ('batch_stats', new.dcg.batch_stats)):
    got = _flat(getattr(new.eps, coll)['encoder'])
    want = _flat(src['global_net'])
    assert got.keys() == want.keys()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  for k, v in _flat(new.ema_params['encoder']).items():
    np.testing.assert_array_equal(v, _flat(state.dcg.params['global_net'])[k])
  # Copies, not shared buffers: the training loop donates the whole state to each step.
  step = jax.jit(functools.partial(train_steps.joint_step, models), donate_argnums=0)
  own = train_state.eps_encoder_from_dcg(jax.tree.map(jnp.copy, state))  # Leaves the fixture be.
  after, _ = step(own, batch, jax.random.key(3))
  assert int(after.step) == int(state.step) + 1
  # The head and the DCG are untouched.
  for k, v in _flat(state.eps.params).items():
    if not k.startswith('encoder/'):
      np.testing.assert_array_equal(_flat(new.eps.params)[k], v)
  arch = 'resnet18' if models.eps.backbone == 'resnet_tiny' else 'resnet_tiny'
  other = dataclasses.replace(models, eps=models.eps.clone(backbone=arch))
  mismatched = train_state.init_state(other, jax.random.key(0), 28)
  with pytest.raises(Exception, match='model.eps_backbone equal to model.dcg_backbone'):
    train_state.eps_encoder_from_dcg(mismatched)
