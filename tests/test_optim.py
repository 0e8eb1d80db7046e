"""torch-semantics AMSGrad against a float64 transcription of torch.optim.Adam(amsgrad=True)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffmic_jax import optim


def _torch_amsgrad_reference(params, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
  """torch's update rule in float64: max of the raw second moment, bias correction after."""
  p = params.astype(np.float64)
  m, v, v_max = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
  for t, g in enumerate(grads, start=1):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    v_max = np.maximum(v_max, v)
    denom = np.sqrt(v_max) / np.sqrt(1 - b2**t) + eps
    p = p - lr / (1 - b1**t) * m / denom
  return p


def _run(tx, params, grads):
  state = tx.init(params)
  step = jax.jit(tx.update)
  for g in grads:
    updates, state = step(jnp.asarray(g, jnp.float32), state, params)
    params = optax.apply_updates(params, updates)
  return np.asarray(params)


def _gradients(steps=60, size=32):
  # Large early gradients, then small ones: where the order of max and correction matters.
  rng = np.random.default_rng(0)
  scale = np.where(np.arange(steps) < 5, 1.0, 0.05)[:, None]
  return rng.standard_normal((steps, size)) * scale


def test_matches_torch_update_rule_over_many_steps():
  grads = _gradients()
  p0 = np.zeros(32, np.float32)  # Displacement alone, free of float32 rounding at |p| ~ 1.
  ours = _run(optim.torch_amsgrad(2e-4), jnp.asarray(p0), grads)
  ref = _torch_amsgrad_reference(p0, grads, 2e-4)
  np.testing.assert_allclose(ours - p0, ref - p0, rtol=1e-5, atol=1e-9)
  # optax.amsgrad keeps the max of the bias-corrected moment: a much smaller displacement here.
  theirs = _run(optax.amsgrad(2e-4), jnp.asarray(p0), grads)
  assert np.abs(theirs - p0).sum() < 0.8 * np.abs(ref - p0).sum()


def test_first_step_is_lr_times_sign():
  # At t = 1 both corrections cancel: the update is -lr g / (|g| + eps), about -lr sign(g).
  g = np.array([3.0, -0.5, 1e-2], np.float32)
  p = _run(optim.torch_amsgrad(1e-3), jnp.zeros(3), [g])
  np.testing.assert_allclose(p, -1e-3 * np.sign(g), rtol=1e-5)


def test_state_keeps_the_raw_second_moment_maximum():
  tx = optim.torch_amsgrad(1e-3)
  params = jnp.zeros(2)
  state = tx.init(params)
  for g in ([2.0, 0.0], [0.0, 0.0]):
    _, state = tx.update(jnp.asarray(g), state, params)
  amsgrad_state = state[0]
  assert int(amsgrad_state.count) == 2
  np.testing.assert_allclose(amsgrad_state.nu_max, [0.001 * 4.0, 0.0], rtol=1e-6)
  np.testing.assert_allclose(amsgrad_state.nu, [0.999 * 0.001 * 4.0, 0.0], rtol=1e-6)
