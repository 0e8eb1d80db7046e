"""What the golden parity tests and tests/golden/make_golden.py share: models, weights, inputs.

The reference numbers in tests/golden/*.npz come from the official PyTorch modules run on these
weights and inputs. The weights are not stored: both sides rebuild them from `SEED` here (Flax init,
then BatchNorm parameters and running statistics drawn away from their 1/0 init so that eval mode
is exercised), and the generator copies them into the official modules.
"""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from configs import default
from diffmic_jax import train_state

GOLDEN = pathlib.Path(__file__).parent / 'golden'
SEED = 0
NUM_CLASSES = 5  # APTOS.
WIDTH = 8  # Trunk base width: 1-block-per-stage ResNets, torchvision layout.
FEATURE_DIM = 32
IMAGE_SIZE = 96  # A 3x3 saliency grid of 32 px tiles, as the official 7x7 at 224 px.
TIMESTEPS = 1000
TEST_STEPS = 60  # The APTOS test chain.


JOINT_KEY = 7  # jax.random.key of the joint step (timesteps, noise).
CHAIN_KEY = 11  # jax.random.key of the test chain's noise.
DCG_STEPS = 3  # DCG optimizer steps compared.

# The training trajectory: TRAJ_IMAGES train images in a fixed order, batches of TRAJ_BATCH (an
# epoch is 4 + 3 images: the partial last batch), TRAJ_PRE_EPOCHS of DCG pre-training, then
# TRAJ_EPOCHS joint epochs with TRAJ_WARMUP warm-up epochs; step s draws its timesteps and noise
# from fold_in(train_state.keys(TRAJ_SEED)['train'], s), as train.py does.
TRAJ_IMAGES, TRAJ_BATCH = 7, 4
TRAJ_PRE_EPOCHS, TRAJ_EPOCHS, TRAJ_WARMUP = 2, 12, 2
TRAJ_SEED = 0
TRAJ_LEAVES = ('out/kernel', 'layers_0/linear/kernel', 'project/kernel', 'encoder/conv1/kernel')


def config():
  """The default config at golden size: 224 px APTOS settings shrunk as above."""
  c = default.get_config()
  c.num_classes, c.image_size = NUM_CLASSES, IMAGE_SIZE
  m = c.model
  m.dcg_backbone = m.eps_backbone = 'resnet_tiny'
  m.width, m.feature_dim, m.crop_first_channel = WIDTH, FEATURE_DIM, True
  c.diffusion.timesteps = TIMESTEPS
  return c


def trajectory_config():
  """config() with the trajectory's batch, epochs and warm-up."""
  c = config()
  c.train.batch_size, c.train.dcg_pretrain_epochs = TRAJ_BATCH, TRAJ_PRE_EPOCHS
  c.train.epochs, c.train.warmup_epochs, c.seed = TRAJ_EPOCHS, TRAJ_WARMUP, TRAJ_SEED
  return c


def trajectory_batches(images, labels) -> list[dict]:
  """One epoch's batches in their fixed order: whole batches, then the partial last one."""
  return [{'image': images[i:i + TRAJ_BATCH], 'label': labels[i:i + TRAJ_BATCH]}
          for i in range(0, len(labels), TRAJ_BATCH)]


def trajectory_draws(step: int, batch: int):
  """The timesteps and noise the port's joint step `step` draws for a batch of `batch`."""
  from diffmic_jax.diffusion import antithetic_timesteps  # pylint: disable=import-outside-toplevel
  key = jax.random.fold_in(train_state.keys(TRAJ_SEED)['train'], step)
  k_t, k_noise = jax.random.split(key)
  return (np.asarray(antithetic_timesteps(k_t, batch, TIMESTEPS)),
          np.asarray(jax.random.normal(k_noise, (batch, NUM_CLASSES))))


def models(**loss) -> train_state.Models:
  c = config()
  c.loss.update(loss)
  return train_state.build_models(c, steps_per_epoch=10)


def dcg():
  return models().dcg


def eps_net():
  return models().eps


def _perturb_batch_norms(variables: dict, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(variables, sep='/')
  draw = {'scale': lambda n: 1 + 0.2 * rng.standard_normal(n),
          'bias': lambda n: 0.2 * rng.standard_normal(n),
          'mean': lambda n: 0.2 * rng.standard_normal(n),
          'var': lambda n: rng.uniform(0.5, 1.5, n)}
  for path in sorted(flat):
    leaf = path.rsplit('/', 1)[-1]
    is_norm = 'bn' in path or 'norms_' in path
    if is_norm and leaf in draw and flat[path].ndim == 1:
      flat[path] = jnp.asarray(draw[leaf](flat[path].shape[0]), jnp.float32)
  return traverse_util.unflatten_dict(flat, sep='/')


@functools.cache
def dcg_variables() -> dict:
  x = jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3))
  return _perturb_batch_norms(jax.jit(dcg().init)(jax.random.key(SEED), x), SEED)


@functools.cache
def eps_variables() -> dict:
  x, y = jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)), jnp.zeros((1, NUM_CLASSES))
  t = jnp.zeros((1,), jnp.int32)
  init = jax.jit(eps_net().init)
  return _perturb_batch_norms(init(jax.random.key(SEED + 1), x, y, y, t), SEED + 1)


def load(name: str) -> dict:
  with np.load(GOLDEN / f'{name}.npz') as f:
    return dict(f)
