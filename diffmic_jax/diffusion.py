"""The CARD diffusion over class-label vectors that DiffMIC uses, with the paper's symbols.

The forward process ends not at N(0, I) but at N(y_hat, I), the guidance classifier's prior:

    q(y_t | y_0, y_hat) = N(sqrt(abar_t) y_0 + (1 - sqrt(abar_t)) y_hat, (1 - abar_t) I)

and the posterior q(y_{t-1} | y_t, y_0, y_hat) has mean gamma_0 y_0 + gamma_1 y_t + gamma_2 y_hat and
variance beta_tilde_t. Timesteps are 0-based indices t = 0..T-1 into the arrays, as in CARD.

The schedule is a pytree of float32 arrays built once in float64, so it can be passed through `jit`
and indexed with traced timesteps.
"""

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


def make_betas(schedule: str, timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02):
  """beta_1..beta_T as float64. 'linear' is DiffMIC's; 'quadratic' and 'cosine' are alternatives."""
  if schedule == 'linear':
    return np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)
  if schedule == 'quadratic':
    return np.linspace(beta_start**0.5, beta_end**0.5, timesteps, dtype=np.float64)**2
  if schedule == 'cosine':  # Nichol & Dhariwal (2021), s = 0.008, betas capped at 0.999.
    s = 0.008
    f = np.cos((np.arange(timesteps + 1, dtype=np.float64) / timesteps + s) / (1 + s) * np.pi / 2)**2
    return np.clip(1 - f[1:] / f[:-1], 0, 0.999)
  raise ValueError(f"beta_schedule must be 'linear', 'quadratic' or 'cosine', got {schedule!r}")


@flax.struct.dataclass
class CARDSchedule:
  """Per-timestep constants, each an array of shape (T,)."""
  betas: jax.Array
  alphas: jax.Array
  alphas_bar: jax.Array
  alphas_bar_sqrt: jax.Array  # sqrt(abar_t)
  one_minus_alphas_bar_sqrt: jax.Array  # sqrt(1 - abar_t)
  alphas_bar_prev: jax.Array  # abar_{t-1}, with abar_{-1} = 1
  gamma_0: jax.Array  # beta_t sqrt(abar_{t-1}) / (1 - abar_t)
  gamma_1: jax.Array  # (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t)
  gamma_2: jax.Array  # 1 + (sqrt(abar_t) - 1)(sqrt(alpha_t) + sqrt(abar_{t-1})) / (1 - abar_t)
  posterior_variance: jax.Array  # beta_tilde_t = (1 - abar_{t-1}) beta_t / (1 - abar_t)

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]

  @classmethod
  def create(cls, timesteps: int = 1000, schedule: str = 'linear', beta_start: float = 1e-4,
             beta_end: float = 0.02) -> 'CARDSchedule':
    betas = make_betas(schedule, timesteps, beta_start, beta_end)
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    gamma_0 = betas * np.sqrt(abar_prev) / (1 - abar)
    gamma_1 = (1 - abar_prev) * np.sqrt(alphas) / (1 - abar)
    gamma_2 = 1 + (np.sqrt(abar) - 1) * (np.sqrt(alphas) + np.sqrt(abar_prev)) / (1 - abar)
    arrays = dict(betas=betas, alphas=alphas, alphas_bar=abar, alphas_bar_sqrt=np.sqrt(abar),
                  one_minus_alphas_bar_sqrt=np.sqrt(1 - abar), alphas_bar_prev=abar_prev,
                  gamma_0=gamma_0, gamma_1=gamma_1, gamma_2=gamma_2,
                  posterior_variance=(1 - abar_prev) * betas / (1 - abar))
    return cls(**{k: jnp.asarray(v, jnp.float32) for k, v in arrays.items()})

  @classmethod
  def from_config(cls, cfg) -> 'CARDSchedule':
    return cls.create(cfg.timesteps, cfg.beta_schedule, cfg.beta_start, cfg.beta_end)

  def _at(self, name: str, t):
    """Gathers a per-step constant at int t (scalar or (B,)), shaped to broadcast over (B, K)."""
    v = getattr(self, name)[t]
    return v[..., None] if jnp.ndim(v) else v

  def q_sample(self, y0, y_hat, t, noise):
    """y_t = sqrt(abar_t) y_0 + (1 - sqrt(abar_t)) y_hat + sqrt(1 - abar_t) noise."""
    a = self._at('alphas_bar_sqrt', t)
    return a * y0 + (1 - a) * y_hat + self._at('one_minus_alphas_bar_sqrt', t) * noise

  def predict_y0(self, y_t, y_hat, t, eps):
    """y0_tilde = (y_t - (1 - sqrt(abar_t)) y_hat - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
    a = self._at('alphas_bar_sqrt', t)
    return (y_t - (1 - a) * y_hat - self._at('one_minus_alphas_bar_sqrt', t) * eps) / a

  def posterior_mean(self, y0, y_t, y_hat, t):
    """mu_tilde = gamma_0 y_0 + gamma_1 y_t + gamma_2 y_hat."""
    return (self._at('gamma_0', t) * y0 + self._at('gamma_1', t) * y_t
            + self._at('gamma_2', t) * y_hat)

  def p_sample_step(self, y_t, y_hat, t, eps, z):
    """One ancestral step y_t -> y_{t-1} = mu_tilde(y0_tilde(eps)) + sqrt(beta_tilde_t) z, t >= 1."""
    y0 = self.predict_y0(y_t, y_hat, t, eps)
    return self.posterior_mean(y0, y_t, y_hat, t) + jnp.sqrt(self._at('posterior_variance', t)) * z

  def last_step(self, y_t, y_hat, eps):
    """The noise-free last step from t = 0: y_0 = y0_tilde."""
    return self.predict_y0(y_t, y_hat, 0, eps)

  def ddim_step(self, y_t, y_hat, t, s, eps):
    """Deterministic (eta = 0) jump from step t to an earlier step s (s = -1 means y_0).

    y_s = sqrt(abar_s) y0_tilde + (1 - sqrt(abar_s)) y_hat + sqrt(1 - abar_s) eps, which keeps
    y_s on the forward marginal's mean path for the predicted y_0 and noise.
    """
    y0 = self.predict_y0(y_t, y_hat, t, eps)
    abar_s = jnp.where(s >= 0, self.alphas_bar[jnp.maximum(s, 0)], 1.0)
    a = jnp.sqrt(abar_s)
    return a * y0 + (1 - a) * y_hat + jnp.sqrt(1 - abar_s) * eps


def antithetic_timesteps(key, batch_size: int, num_timesteps: int):
  """t ~ U{0..T-1} for half the batch and T-1-t for the other half, as DiffMIC trains."""
  half = jax.random.randint(key, (batch_size // 2 + 1,), 0, num_timesteps)
  return jnp.concatenate([half, num_timesteps - 1 - half])[:batch_size]
