"""The two pure training steps of DiffMIC, written once for the global batch.

Under `jax.jit` with the batch sharded over a ('data',) mesh and the state replicated, XLA inserts
the gradient all-reduce, and BatchNorm statistics and the MMD are over the global batch whatever
the device count. No `pmap`, no `axis_name`.

Joint step, as the official trainer does it per batch:
  1. priors (y_hat, y_hat_g, y_hat_l) from the DCG in eval mode, behind stop_gradient;
  2. one epsilon-network update on  mse(eps, eps_fused) + lambda [MMD(eps, eps_g) + MMD(eps, eps_l)],
     the three noisy labels sharing one noise draw and antithetic timesteps;
  3. one DCG cross-entropy update (train mode) on the same batch.
The epsilon network's ResNet encoder runs once and feeds its three head passes: the gradient is the
sum of three identical encoder passes, at a third of the cost. The head passes run in the official
order (fused, global, local), each updating the head's BatchNorm statistics in turn.
"""

import jax
import jax.numpy as jnp
import optax

from diffmic_jax import losses
from diffmic_jax.data.normalize import normalize
from diffmic_jax.diffusion import antithetic_timesteps
from diffmic_jax.models import priors as dcg_priors
from diffmic_jax.models.eps_net import EpsilonNet
from diffmic_jax.train_state import Models, NetState, TrainState


def _dcg_update(models: Models, net: NetState, images, labels):
  """One cross-entropy step of the DCG on its fused logits (train-mode BatchNorm)."""
  def loss_fn(params):
    out, updates = models.dcg.apply(net.variables(params), images, train=True,
                                    mutable=['batch_stats'])
    return losses.cross_entropy(out['logits'], labels, models.num_classes), (out, updates)

  (loss, (out, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(net.params)
  step, opt_state = models.dcg_tx.update(grads, net.opt_state, net.params)
  new = NetState(optax.apply_updates(net.params, step), updates['batch_stats'], opt_state)
  acc = jnp.mean(jnp.argmax(out['logits'], -1) == labels)
  return new, {'dcg_ce': loss, 'dcg_train_acc': acc}


def dcg_pretrain_step(models: Models, state: TrainState, batch: dict):
  """Stage 1: DCG alone. `batch['image']` is uint8, normalised here on the device."""
  dcg, metrics = _dcg_update(models, state.dcg, normalize(batch['image']), batch['label'])
  return state.replace(step=state.step + 1, dcg=dcg), metrics


def dcg_statistics_pass(models: Models, dcg: NetState, batch: dict):
  """The DCG in train mode on one batch with no weight update: returns its BatchNorm running
  statistics, moved as in the official `evaluate_guidance_model`, which never calls `eval()`."""
  _, updates = models.dcg.apply(dcg.variables(), normalize(batch['image']), train=True,
                                mutable=['batch_stats'])
  return updates['batch_stats']


def diffusion_loss(models: Models, eps_params, eps_batch_stats, images, labels, priors, key):
  """The epsilon network's loss for one batch, given the DCG priors.

  Args:
    models: static half of the run.
    eps_params, eps_batch_stats: epsilon-network variables.
    images: (B, H, W, 3) normalised.
    labels: (B,) ints.
    priors: (y_hat, y_hat_g, y_hat_l), each (B, K).
    key: PRNG key for timesteps and noise.

  Returns:
    (loss, (metrics, new batch_stats)).
  """
  k_t, k_noise = jax.random.split(key)
  b, kk = images.shape[0], models.num_classes
  sched = models.schedule
  t = antithetic_timesteps(k_t, b, sched.num_timesteps)
  noise = jax.random.normal(k_noise, (b, kk))
  y0 = jax.nn.one_hot(labels, kk)
  y_hat, y_hat_g, y_hat_l = priors

  variables = {'params': eps_params, 'batch_stats': eps_batch_stats}
  feats, upd = models.eps.apply(variables, images, True, method=EpsilonNet.encode,
                                mutable=['batch_stats'])
  stats = upd['batch_stats']

  def head(y_t, mean, stats):
    """One train-mode head pass for prior `mean`: its noise prediction and the new statistics."""
    cond = mean if models.eps.prior_input == 'fused' else (y_hat_g, y_hat_l)
    pred, upd = models.eps.apply({'params': eps_params, 'batch_stats': stats}, feats, y_t, cond, t,
                                 True, method=EpsilonNet.head, mutable=['batch_stats'])
    return pred, upd['batch_stats']

  preds, y_ts = [], []
  for mean in (y_hat, y_hat_g, y_hat_l):
    y_t = sched.q_sample(y0, mean, t, noise)
    y_ts.append(y_t)
    pred, stats = head(y_t, mean, stats)
    preds.append(pred)
  weights = (losses.prior_hardness_weights(y_hat, labels, models.prior_weight)
             if models.prior_weight > 0 else None)
  mse = losses.noise_mse(noise, preds[0], weights)
  mmd_g = losses.rbf_mmd(noise, preds[1], models.mmd_bandwidths)
  mmd_l = losses.rbf_mmd(noise, preds[2], models.mmd_bandwidths)
  loss = mse + models.mmd_weight * (mmd_g + mmd_l)
  metrics = {'loss': loss, 'mse': mse, 'mmd_global': mmd_g, 'mmd_local': mmd_l}
  if weights is not None:
    metrics['prior_weight_mean'] = jnp.mean(weights)
  if models.ce_weight > 0:  # The official term: a fourth head pass, its output detached.
    pred, stats = head(y_ts[0], y_hat, stats)
    ce = y0_cross_entropy(models, y_ts[0], y_hat, t, jax.lax.stop_gradient(pred), labels)
    loss = loss + models.ce_weight * ce
    metrics.update(loss=loss, y0_ce=ce)
  if models.eps_ce_weight > 0:
    ce = y0_cross_entropy(models, y_ts[0], y_hat, t, preds[0], labels)
    loss = loss + models.eps_ce_weight * ce
    metrics.update(loss=loss, y0_ce=ce)
  return loss, (metrics, stats)


def y0_cross_entropy(models: Models, y_t, y_hat, t, eps_pred, labels):
  """CE of the labels against the logits -(y0_tilde - 1)^2 (the official `--add_ce_loss` form).

  y0_tilde is the label vector the predicted noise implies (the reverse step's y0 estimate).
  Officially eps_pred is detached, so the term's gradient reaches only the DCG, whose optimizer then
  zeroes it: `loss.ce_weight` changes the reported loss and, through its fourth train-mode pass, the
  head's BatchNorm statistics, nothing else. `loss.eps_ce_weight` back-propagates the same term
  through eps_pred: a direct classification signal for the epsilon network, not official.
  """
  y0 = models.schedule.predict_y0(y_t, y_hat, t, eps_pred)
  return losses.cross_entropy(-jnp.square(y0 - 1.0), labels, models.num_classes)


def _ema(models: Models, ema, params, step):
  """EMA with the usual warm-up, decay_t = min(decay, (1 + t) / (10 + t)), so short runs track."""
  if models.ema_decay <= 0:
    return params
  decay = jnp.minimum(models.ema_decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)


def drop_priors(priors, key, rate: float, to: str):
  """Prior dropout: each image's priors (y_hat, y_hat_g, y_hat_l) replaced, with probability
  `rate`, by the uniform prior ('uniform') or by another image's priors ('shuffle'), all three
  together, so that the epsilon network must read the image to predict the noise."""
  k_drop, k_perm = jax.random.split(key)
  b, kk = priors[0].shape
  drop = jax.random.bernoulli(k_drop, rate, (b, 1))
  if to == 'uniform':
    other = (jnp.full((b, kk), 1.0 / kk, priors[0].dtype),) * len(priors)
  elif to == 'shuffle':
    perm = jax.random.permutation(k_perm, b)
    other = tuple(p[perm] for p in priors)
  else:
    raise ValueError(f"prior dropout replaces by 'uniform' or 'shuffle', got {to!r}")
  return tuple(jnp.where(drop, o, p) for o, p in zip(other, priors))


def joint_step(models: Models, state: TrainState, batch: dict, key):
  """Stage 2: one epsilon-network update, then one DCG update, on the same batch (uint8 images)."""
  images, labels = normalize(batch['image']), batch['label']
  out = models.dcg.apply(state.dcg.variables(), images, train=False)
  priors = jax.lax.stop_gradient(dcg_priors(out))
  if models.prior_dropout > 0:  # Its own key: the official draws stay as they are.
    priors = drop_priors(priors, jax.random.fold_in(key, 1), models.prior_dropout,
                         models.prior_dropout_to)

  grad_fn = jax.value_and_grad(diffusion_loss, argnums=1, has_aux=True)
  (_, (metrics, eps_stats)), grads = grad_fn(models, state.eps.params, state.eps.batch_stats,
                                             images, labels, priors, key)
  updates, opt_state = models.eps_tx.update(grads, state.eps.opt_state, state.eps.params)
  params = optax.apply_updates(state.eps.params, updates)
  eps = NetState(params, eps_stats, opt_state)
  ema = _ema(models, state.ema_params, params, state.joint_steps)

  dcg, dcg_metrics = _dcg_update(models, state.dcg, images, labels)
  metrics.update(dcg_metrics, grad_norm=optax.tree.norm(grads),
                 eps_lr=models.eps_lr(state.joint_steps))
  return state.replace(step=state.step + 1, joint_steps=state.joint_steps + 1, dcg=dcg, eps=eps,
                       ema_params=ema), metrics
