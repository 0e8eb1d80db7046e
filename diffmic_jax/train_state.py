"""Everything a training run carries from step to step, and how it is built from a config.

`TrainState` is one pytree (both models' params, batch stats and optimizer states, the EMA of the
epsilon network, the step), so one Orbax save captures a resumable run and one sharding
(replicated over the ('data',) mesh) places it. The optimizers themselves are static and live in
`Models`, built from the config alongside the Flax modules.
"""

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from diffmic_jax import errors, optim
from diffmic_jax.diffusion import CARDSchedule
from diffmic_jax.models import DCG, EpsilonNet


@flax.struct.dataclass
class NetState:
  params: Any
  batch_stats: Any
  opt_state: Any

  def variables(self, params=None) -> dict:
    return {'params': self.params if params is None else params, 'batch_stats': self.batch_stats}


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # Optimizer steps taken over both stages.
  joint_steps: jax.Array  # Stage-2 steps: drives the epsilon-network LR schedule and EMA warm-up.
  dcg: NetState
  eps: NetState
  ema_params: Any  # EMA of eps params (equal to them when EMA is off).

  def eval_eps_params(self, use_ema: bool):
    return self.ema_params if use_ema else self.eps.params


@functools.lru_cache(maxsize=None)
def keys(seed: int) -> dict:
  """The run's per-purpose keys ('init', 'train', 'eval'), each folded from the one root key."""
  root = jax.random.key(seed)
  return {name: jax.random.fold_in(root, i) for i, name in enumerate(('init', 'train', 'eval'))}


@dataclasses.dataclass(frozen=True)
class Models:
  """The static half of a run: modules, optimizers, schedule and the numbers steps need."""
  dcg: DCG
  eps: EpsilonNet
  dcg_tx: optax.GradientTransformation
  eps_tx: optax.GradientTransformation
  eps_lr: optax.Schedule
  schedule: CARDSchedule
  num_classes: int
  mmd_weight: float
  mmd_bandwidths: tuple
  ema_decay: float
  ce_weight: float = 0.0  # The official --add_ce_loss: no gradient, see train_steps.
  eps_ce_weight: float = 0.0  # The same CE back-propagated into the epsilon network.
  prior_weight: float = 0.0  # config.loss.prior_weight: DiffMIC-v2's noise-loss weight.
  prior_dropout: float = 0.0  # config.train.prior_dropout; 0: the official step.
  prior_dropout_to: str = 'uniform'


def _dtype(name: str):
  try:
    return {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[name]
  except KeyError:
    raise ValueError(f"model.dtype must be 'float32' or 'bfloat16', got {name!r}") from None


def cpu_tuned(config) -> bool:
  """Whether the run uses the CPU tuning: config.cpu_tuning, on the CPU backend only."""
  return bool(config.cpu_tuning) and jax.default_backend() == 'cpu'


def build_models(config, steps_per_epoch: int) -> Models:
  """Builds modules and optimizers from the config (the official recipe, see configs/default.py)."""
  m, t = config.model, config.train
  dtype = _dtype(m.dtype)
  cpu = cpu_tuned(config)
  dcg = DCG(config.num_classes, backbone=m.dcg_backbone, small_stem=m.small_stem,
            width=m.width, num_rois=m.num_rois, top_t_percent=m.top_t_percent,
            attention_dim=m.attention_dim, crop_first_channel=m.crop_first_channel, dtype=dtype,
            cpu_tuning=cpu, remat=m.remat)
  eps = EpsilonNet(config.num_classes, num_timesteps=config.diffusion.timesteps,
                   feature_dim=m.feature_dim, backbone=m.eps_backbone, small_stem=m.small_stem,
                   width=m.width, prior_input=m.prior_input, dtype=dtype, cpu_tuning=cpu,
                   remat=m.remat)
  total = max(1, t.epochs * steps_per_epoch)
  warmup = min(t.warmup_epochs * steps_per_epoch, total - 1)
  # Linear warm-up 0 -> lr, then half-cosine to min_lr at the last step (the official per-iteration
  # schedule). The DCG's is torch's Adam(amsgrad=True), constant 2e-4 (optax.amsgrad differs).
  eps_lr = optax.warmup_cosine_decay_schedule(0.0, t.eps_lr, warmup, total, t.min_lr)
  eps_tx = optax.chain(optax.clip_by_global_norm(t.grad_clip), optax.adam(eps_lr))
  return Models(dcg=dcg, eps=eps, dcg_tx=optim.torch_amsgrad(t.dcg_lr), eps_tx=eps_tx,
                eps_lr=eps_lr,
                schedule=CARDSchedule.from_config(config.diffusion),
                num_classes=config.num_classes, mmd_weight=config.loss.mmd_weight,
                mmd_bandwidths=tuple(config.loss.mmd_bandwidths), ema_decay=t.ema_decay,
                ce_weight=config.loss.ce_weight, eps_ce_weight=config.loss.eps_ce_weight,
                prior_weight=config.loss.prior_weight, prior_dropout=t.prior_dropout,
                prior_dropout_to=t.prior_dropout_to)


def init_state(models: Models, key, image_size: int) -> TrainState:
  """Random initial state (call under jit with out_shardings to place it)."""
  k_dcg, k_eps = jax.random.split(key)
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  kk = models.num_classes
  dcg_vars = models.dcg.init(k_dcg, x)
  priors = jnp.zeros((1, kk)) if models.eps.prior_input == 'fused' else (jnp.zeros((1, kk)),) * 2
  eps_vars = models.eps.init(k_eps, x, jnp.zeros((1, kk)), priors, jnp.zeros((1,), jnp.int32))
  return state_from_variables(models, dcg_vars, eps_vars)


def state_from_variables(models: Models, dcg_vars: dict, eps_vars: dict) -> TrainState:
  """A step-0 state around given variables (fresh optimizer states)."""
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      joint_steps=jnp.zeros((), jnp.int32),
      dcg=NetState(dcg_vars['params'], dcg_vars['batch_stats'], models.dcg_tx.init(dcg_vars['params'])),
      eps=NetState(eps_vars['params'], eps_vars['batch_stats'], models.eps_tx.init(eps_vars['params'])),
      ema_params=_copy(eps_vars['params']))


def _copy(tree):
  """Fresh buffers: a donated state must not hold one buffer in two leaves."""
  return jax.tree.map(jnp.copy, tree)


def eps_encoder_from_dcg(state: TrainState) -> TrainState:
  """The state with the epsilon network's encoder (params, statistics, EMA) replaced by the DCG's
  global trunk, which has the same architecture when both use one backbone, width and stem."""
  src = {'params': state.dcg.params['global_net'], 'batch_stats': state.dcg.batch_stats['global_net']}
  dst = {'params': state.eps.params['encoder'], 'batch_stats': state.eps.batch_stats['encoder']}
  shape = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)
  if shape(src) != shape(dst):
    raise errors.UserError('model.eps_init=dcg needs the DCG global trunk and the epsilon-network '
                           'encoder to be the same network: set model.eps_backbone equal to '
                           'model.dcg_backbone')
  params = {**state.eps.params, 'encoder': _copy(src['params'])}
  stats = {**state.eps.batch_stats, 'encoder': _copy(src['batch_stats'])}
  return state.replace(eps=state.eps.replace(params=params, batch_stats=stats),
                       ema_params={**state.ema_params, 'encoder': _copy(src['params'])})
