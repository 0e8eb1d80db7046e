"""The port against numbers the official PyTorch DiffMIC produced on the same weights and inputs.

tests/golden/*.npz hold the official code's outputs (tests/golden/README.md says how they were
made); the weights are rebuilt here from tests/golden_setup.py, so these tests need no torch.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import golden_setup as gs
from diffmic_jax import sampling, train_steps
from diffmic_jax.data.normalize import normalize
from diffmic_jax.diffusion import antithetic_timesteps
from diffmic_jax.models import eps_net, priors as dcg_priors
from diffmic_jax.train_state import state_from_variables


def _flat(tree):
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep='/').items()}


def _close(got, want, name, rtol=1e-4, atol=1e-5):
  np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=rtol,
                             atol=atol, err_msg=name)


def _close_leaf(got, want, name, rtol=1e-4):
  """Elementwise, with float32 accumulation error allowed relative to the leaf's largest value."""
  _close(got, want, name, rtol=rtol, atol=5e-5 * float(np.max(np.abs(want))) + 1e-6)


def _section(golden, prefix):
  return {k[len(prefix) + 1:]: v for k, v in golden.items() if k.startswith(prefix + '/')}


@pytest.fixture(scope='module')
def inputs():
  dcg = gs.load('dcg')
  return dcg, normalize(dcg['images']), jnp.asarray(dcg['labels'])


@pytest.mark.parametrize('mode', ['eval', 'train'])
def test_dcg_forward(inputs, mode):
  golden, x, _ = inputs
  apply = jax.jit(functools.partial(gs.dcg().apply, train=mode == 'train', mutable=['batch_stats']))
  out, updates = apply(gs.dcg_variables(), x)
  want = _section(golden, mode)
  for k in ('logits', 'logits_global', 'logits_local', 'saliency', 'attention'):
    _close(out[k], want[k], f'{mode}/{k}')
  np.testing.assert_array_equal(out['roi_boxes'][..., :2], want['roi_corners'])
  if mode == 'train':  # torch's running statistics, unbiased variance included.
    stats = _flat(updates['batch_stats'])
    want_stats = _section(golden, 'batch_stats')
    assert set(stats) == set(want_stats)
    for k, v in want_stats.items():
      _close(stats[k], v, k, rtol=1e-5, atol=1e-6)


def test_epsilon_network_forward(inputs):
  _, x, _ = inputs
  golden = gs.load('eps')
  model, variables = gs.eps_net(), gs.eps_variables()
  args = (x, golden['y_t'], golden['y_hat'], jnp.asarray(golden['t'], jnp.int32))
  _close(jax.jit(functools.partial(model.apply, train=False))(variables, *args), golden['eval/eps'],
         'eval')
  train = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))
  out, updates = train(variables, *args)
  _close(out, golden['train/eps'], 'train')
  stats = _flat(updates['batch_stats'])
  for k, v in _section(golden, 'batch_stats').items():
    _close(stats[k], v, k, rtol=1e-5, atol=1e-6)


def _state(models):
  return state_from_variables(models, gs.dcg_variables(), gs.eps_variables())


def test_joint_step_losses_and_gradients(inputs):
  """The epsilon network's loss and gradient with the official CE term on (which adds nothing to
  the gradient: the official difference with and without it is exactly 0)."""
  golden, x, labels = inputs
  want = gs.load('joint')
  assert float(want['ce_grad_effect']) == 0.0
  k_t, k_noise = jax.random.split(jax.random.key(gs.JOINT_KEY))
  np.testing.assert_array_equal(antithetic_timesteps(k_t, 4, gs.TIMESTEPS), want['t'],
                                'the port draws timesteps differently: regenerate the golden files')
  np.testing.assert_array_equal(jax.random.normal(k_noise, (4, gs.NUM_CLASSES)), want['noise'])
  models = gs.models(ce_weight=0.01)
  state = _state(models)
  priors = dcg_priors(jax.jit(models.dcg.apply)(state.dcg.variables(), x))
  fn = jax.value_and_grad(train_steps.diffusion_loss, argnums=1, has_aux=True)
  (_, (metrics, stats)), grads = jax.jit(lambda p: fn(
      models, p, state.eps.batch_stats, x, labels, priors, jax.random.key(gs.JOINT_KEY)))(
          state.eps.params)
  for k in ('loss', 'mse', 'mmd_global', 'mmd_local'):
    _close(metrics[k], want[k], k, rtol=1e-5, atol=1e-6)
  # y0 = (y_t - ... - sqrt(1 - abar_t) eps) / sqrt(abar_t): at t = 900 float32 rounding of eps is
  # multiplied by 1 / sqrt(abar_t) ~ 60 before it is squared into the CE's logits.
  _close(metrics['y0_ce'], want['y0_ce'], 'y0_ce', rtol=5e-5, atol=1e-6)
  grads = _flat(grads)
  _close(np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in grads.values())),
         want['eps_grads_global_norm'], 'global norm')
  for k, v in _section(want, 'eps_grads_norm').items():
    _close(np.linalg.norm(grads[k]), v, k)
  for k, v in _section(want, 'eps_grads').items():
    _close_leaf(grads[k], v, k)
  for k, v in _section(want, 'eps_grads_rows').items():
    _close_leaf(grads[k][want['t'].astype(int)], v, k)
  # The head's statistics after its fourth (CE) pass; the encoder's are updated once, not four
  # times (README: image features computed once).
  for k, v in _section(want, 'eps_head_stats').items():
    _close(_flat(stats)[k], v, k, rtol=1e-5, atol=1e-6)


def test_dcg_optimizer_steps(inputs):
  golden, _, _ = inputs
  want = gs.load('joint')
  models = gs.models()
  state = _state(models)
  start = _flat(state.dcg.params)
  step = jax.jit(lambda s, b: train_steps.dcg_pretrain_step(models, s, b))
  batch = {'image': golden['images'], 'label': golden['labels']}
  deltas = []
  for i in range(gs.DCG_STEPS):
    state, metrics = step(state, batch)
    _close(metrics['dcg_ce'], want[f'dcg_ce/{i}'], f'dcg_ce step {i}', rtol=1e-5)
    deltas.append({k: v - start[k] for k, v in _flat(state.dcg.params).items()})
  for prefix, delta in (('dcg_step1/delta', deltas[0]), ('dcg_delta', deltas[-1])):
    _close(np.sqrt(sum(np.sum(np.square(d, dtype=np.float64)) for d in delta.values())),
           want[f'{prefix}_global_norm'], prefix, rtol=1e-3)
    for k, v in _section(want, prefix).items():
      _close_leaf(delta[k], v, f'{prefix}/{k}', rtol=1e-3)
  stats = _flat(state.dcg.batch_stats)
  for k, v in _section(want, 'dcg_batch_stats').items():
    _close(stats[k], v, k, rtol=1e-4, atol=1e-5)


def test_dcg_gradient(inputs):
  golden, x, labels = inputs
  want = gs.load('joint')
  models = gs.models()
  variables = gs.dcg_variables()

  def ce(params):
    out, _ = models.dcg.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                              train=True, mutable=['batch_stats'])
    return train_steps.losses.cross_entropy(out['logits'], labels, gs.NUM_CLASSES)

  grads = _flat(jax.jit(jax.grad(ce))(variables['params']))
  _close(np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in grads.values())),
         want['dcg_grads_global_norm'], 'global norm')
  for k, v in _section(want, 'dcg_grads').items():
    _close_leaf(grads[k], v, k)


def test_truncated_test_chain(inputs):
  _, x, _ = inputs
  want = gs.load('chain')
  models = gs.models()
  eps_vars, dcg_vars = gs.eps_variables(), gs.dcg_variables()
  y_hat = dcg_priors(jax.jit(models.dcg.apply)(dcg_vars, x))[0]
  _close(y_hat, want['y_hat'], 'y_hat', rtol=1e-5, atol=1e-6)

  @jax.jit
  def chain(y_hat):
    feats = models.eps.apply(eps_vars, x, False, method=eps_net.EpsilonNet.encode)
    return sampling.sample_probs(models.schedule, eps_net.head_fn(models.eps, eps_vars), feats,
                                 y_hat, y_hat, jax.random.key(gs.CHAIN_KEY), method='truncated',
                                 num_steps=gs.TEST_STEPS)

  probs = chain(y_hat)
  _close(probs[0], want['probs'], 'probs', rtol=1e-4, atol=1e-5)
