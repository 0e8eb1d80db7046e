"""Reverse samplers: each one `lax.scan` over a pure step, on the accelerator.

The image features and priors are computed once, before the chain: the epsilon network's encoder
does not depend on y_t or t, so each reverse step costs only the small head. The official code
re-runs the encoder at every step; caching is exact in eval mode.

Four chains:
  'full'       the T-step ancestral chain t = T-1 .. 1, then the noise-free step from t = 0,
               from y_T = y_hat + N(0, I);
  'truncated'  the official test chain: the same loop run over the last n steps of the T-step
               schedule only (t = n-1 .. 0), still started from y_hat + N(0, I). It is not a
               respacing, and it is what produced the published DiffMIC numbers (n = 60 APTOS,
               250 ISIC, 100 placenta). Its start carries unit noise into steps trained on noise
               of std sqrt(1 - abar_n) (0.2 at n = 60): a network that has not learnt to remove
               more than that leaves the excess in y_0;
  'matched'    the same last n steps, started where the forward process puts y_{n-1} when y_0 is
               the prior itself: y_hat + sqrt(1 - abar_{n-1}) N(0, I). It refines the DCG prior
               at the noise levels the network was trained on (for n = T it is the full chain);
  'ddim'       a deterministic respaced chain over S << T timesteps spread over [0, T).
Every sampler draws M samples per image in one call and returns per-sample class probabilities.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffmic_jax.diffusion import CARDSchedule

# What each sampler is, as reports print it ({n}: num_steps, {T}: the schedule's timesteps).
_DESCRIPTIONS = {
    'full': 'full {T}-step ancestral chain',
    'truncated': 'official truncated chain (last {n} of {T} steps)',
    'matched': 'truncated chain with matched start (last {n} of {T} steps, from the prior at their '
               'noise level)',
    'ddim': 'deterministic respaced chain, {n} steps',
}
METHODS = tuple(_DESCRIPTIONS)


def describe(method: str, num_steps: int, num_timesteps: int) -> str:
  """One line naming the sampler and its steps, for reports and logs."""
  if method not in _DESCRIPTIONS:
    raise ValueError(f'sampler must be one of {METHODS}, got {method!r}')
  return _DESCRIPTIONS[method].format(n=num_steps, T=num_timesteps)

# eps_fn(y_t (N, K), t scalar int) -> eps (N, K), with the image features and priors bound.
EpsFn = Callable[[jax.Array, jax.Array], jax.Array]


def ancestral_chain(schedule: CARDSchedule, eps_fn: EpsFn, y_hat, key, num_steps: int,
                    matched_start: bool = False):
  """Runs y_{n-1} -> y_0 over t = num_steps-1 .. 1 with posterior noise, then the last step.

  Args:
    schedule: the T-step schedule; num_steps <= T picks its first num_steps entries.
    eps_fn: noise prediction with features and priors bound.
    y_hat: (N, K) prior mean the forward process ends at.
    key: PRNG key; step t draws its noise from fold_in(key, t).
    num_steps: T for the full chain, n for the official truncated chain.
    matched_start: start at the forward process's noise level for t = n-1 (see 'matched')
      instead of unit noise.

  Returns:
    y_0 (N, K).
  """
  if not 1 <= num_steps <= schedule.num_timesteps:
    raise ValueError(f'num_steps must be in [1, {schedule.num_timesteps}], got {num_steps}')
  scale = schedule.one_minus_alphas_bar_sqrt[num_steps - 1] if matched_start else 1.0
  y_T = y_hat + scale * jax.random.normal(jax.random.fold_in(key, schedule.num_timesteps),
                                          y_hat.shape)

  def step(y_t, t):
    z = jax.random.normal(jax.random.fold_in(key, t), y_t.shape)
    return schedule.p_sample_step(y_t, y_hat, t, eps_fn(y_t, t), z), None

  y_1, _ = jax.lax.scan(step, y_T, jnp.arange(num_steps - 1, 0, -1))
  return schedule.last_step(y_1, y_hat, eps_fn(y_1, jnp.asarray(0)))


def ddim_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
  """Descending, distinct timesteps from T-1 to 0 (at most T of them)."""
  ts = np.unique(np.round(np.linspace(0, num_timesteps - 1, num_steps)).astype(np.int32))
  return ts[::-1].copy()


def ddim_chain(schedule: CARDSchedule, eps_fn: EpsFn, y_hat, key, num_steps: int):
  """Deterministic respaced chain over `num_steps` timesteps; only y_T is random."""
  ts = ddim_timesteps(schedule.num_timesteps, num_steps)
  nexts = np.append(ts[1:], -1)
  y_T = y_hat + jax.random.normal(jax.random.fold_in(key, schedule.num_timesteps), y_hat.shape)

  def step(y_t, ts_pair):
    t, s = ts_pair
    return schedule.ddim_step(y_t, y_hat, t, s, eps_fn(y_t, t)), None

  y_0, _ = jax.lax.scan(step, y_T, (jnp.asarray(ts), jnp.asarray(nexts)))
  return y_0


def sample_y0(schedule: CARDSchedule, head: Callable, features, priors, y_hat, key, *,
              method: str, num_steps: int, num_samples: int = 1):
  """The sampled label vectors y_0 of `num_samples` reverse chains per image.

  Args:
    schedule: the training schedule.
    head: eps_theta(features, y_t, priors, t) with variables bound (see eps_net.head_fn).
    features: (B, F) encoder features, computed once.
    priors: conditioning priors as the head takes them: (B, K) or a tuple of (B, K).
    y_hat: (B, K) prior mean of the forward process (the fused prior).
    key: PRNG key.
    method: 'full' | 'truncated' | 'matched' | 'ddim'.
    num_steps: ignored for 'full'; n for 'truncated' and 'matched'; S for 'ddim'.
    num_samples: M.

  Returns:
    (M, B, K) sampled y_0, before any read-out (calibration.py reads them).
  """
  b, k = y_hat.shape
  tile = lambda a: jnp.tile(a, (num_samples,) + (1,) * (a.ndim - 1))
  feats, y_hat_m = tile(features), tile(y_hat)
  priors_m = jax.tree.map(tile, priors)

  def eps_fn(y_t, t):
    return head(feats, y_t, priors_m, jnp.full((y_t.shape[0],), t, jnp.int32))

  if method == 'full':
    y0 = ancestral_chain(schedule, eps_fn, y_hat_m, key, schedule.num_timesteps)
  elif method in ('truncated', 'matched'):
    y0 = ancestral_chain(schedule, eps_fn, y_hat_m, key, num_steps, method == 'matched')
  elif method == 'ddim':
    y0 = ddim_chain(schedule, eps_fn, y_hat_m, key, num_steps)
  else:
    raise ValueError(f"sampler must be one of {METHODS}, got {method!r}")
  return y0.reshape(num_samples, b, k)


def sample_probs(schedule: CARDSchedule, head: Callable, features, priors, y_hat, key, **kwargs):
  """(M, B, K) softmax of each sampled y_0 (`sample_y0`'s arguments), as the official read-out."""
  return jax.nn.softmax(sample_y0(schedule, head, features, priors, y_hat, key, **kwargs), axis=-1)
