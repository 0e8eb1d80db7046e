"""The port's training stages held to the official training loop's trajectory.

tests/golden/trajectory.npz holds what the official loop computed from the golden weights on seven
fixed, non-augmented APTOS images in batches of 4 + 3 (tests/golden/README.md): per step the DCG's
cross-entropy in pre-training, then per joint iteration the losses, the learning rate, the
gradient norm before clipping, the DCG's cross-entropy, and parameter norms. Here train.py's
compiled steps (the partial batch through the replicated-batch variant, as train.py runs it) go
through the same batches, with the keys train.py derives, and must stay within a few times the
official loop's own float32-vs-float64 drift on the same steps.
"""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

import golden_setup as gs
from diffmic_jax import parallel, train, train_state

DRIFT_FACTOR = 4  # port vs official float32: at most both runs' distance to float64, twice over.
# The DCG's joint-stage cross-entropy: the official float32 and float64 runs start unusually close
# (4e-7 relative), the port 1.3e-6 off, and both gaps then grow at the same rate (to 5e-5 and
# 4e-4 by the last step): 61x that drift measured, so 100x here, still under 1e-4 (relative)
# over the first 15 joint steps.
FACTORS = {'joint/dcg_ce': 100}


@pytest.fixture(scope='module')
def trajectories():
  want = gs.load('trajectory')
  return port_trajectory(want), want


def port_trajectory(want) -> dict:
  """train.py's steps over the golden batches: {quantity: per-step values} as the file has them."""
  config = gs.trajectory_config()
  batches = gs.trajectory_batches(want['images'], want['labels'])
  spe = train.batches_per_epoch(gs.TRAJ_IMAGES, config.train.batch_size, partial_last=True)
  assert spe == len(batches)
  models = train_state.build_models(config, steps_per_epoch=spe)
  mesh = parallel.make_mesh(jax.devices()[:2])
  state = train_state.state_from_variables(models, gs.dcg_variables(), gs.eps_variables())
  # Own buffers for every leaf (the EMA starts as the params): the steps donate the state.
  state = jax.device_put(jax.tree.map(jnp.copy, state), parallel.replicated(mesh))
  steps = {False: train.compiled_steps(models, mesh),
           True: train.compiled_steps(models, mesh, replicated_batch=True)}
  key = train_state.keys(config.seed)['train']
  got = collections.defaultdict(list)
  norm = lambda tree: float(optax.tree.norm(tree))
  step = 0
  for stage, epochs in (('pre', config.train.dcg_pretrain_epochs), ('joint', config.train.epochs)):
    for _ in range(epochs):
      for local in batches:
        partial = len(local['label']) != config.train.batch_size
        pretrain, joint = steps[partial]
        batch = parallel.global_batch(local, mesh, replicate=partial)
        if stage == 'pre':
          state, m = pretrain(state, batch)
        else:
          state, m = joint(state, batch, jax.random.fold_in(key, step))
          for k in ('loss', 'mse', 'mmd_global', 'mmd_local', 'grad_norm'):
            got[f'joint/{k}'].append(float(m[k]))
          got['joint/lr'].append(float(m['eps_lr']))
          got['joint/eps_norm'].append(norm(state.eps.params))
          leaves = traverse_util.flatten_dict(state.eps.params, sep='/')
          for k in gs.TRAJ_LEAVES:
            got[f'joint/leaf_norm/{k}'].append(float(np.linalg.norm(leaves[k])))
        got[f'{stage}/dcg_ce'].append(float(m['dcg_ce']))
        got[f'{stage}/dcg_norm'].append(norm(state.dcg.params))
        step += 1
  return {k: np.asarray(v) for k, v in got.items()}


def test_same_quantities_and_steps(trajectories):
  got, want = trajectories
  keys = {k for k in want if k.startswith(('pre/', 'joint/'))}
  assert set(got) == keys
  pre, joint = gs.TRAJ_PRE_EPOCHS * 2, gs.TRAJ_EPOCHS * 2  # 2 batches per epoch: 4 + 3 images.
  assert all(len(v) == (pre if k.startswith('pre/') else joint) for k, v in want.items()
             if k in keys)


@pytest.mark.parametrize('stage', ['pre', 'joint'])
def test_trajectory_within_the_official_float32_drift(trajectories, stage):
  got, want = trajectories
  for k in sorted(k for k in got if k.startswith(stage + '/')):
    ref = want[k].astype(np.float64)
    drift = np.maximum.accumulate(want[f'drift/{k}'].astype(np.float64))
    allowed = FACTORS.get(k, DRIFT_FACTOR) * drift
    # Plus float32 accumulation on any one step (sums over a batch's pixels in another order):
    # 1e-5, ten times tighter than one step's gradient norms in test_golden_parity.py.
    allowed += 1e-5 * np.abs(ref)
    off = np.abs(got[k] - ref)
    bad = np.flatnonzero(off > allowed)
    assert not bad.size, (f'{k}: steps {bad.tolist()} port {got[k][bad]} official {ref[bad]} '
                          f'allowed {allowed[bad]}')
