"""bench/diffusion_vs_dcg.py's helpers: the encoder ablation's row shuffle, the agreement counts,
and its predict function's `encoder_images` argument on a real (tiny) model."""

import jax
import numpy as np

from configs import demo
from conftest import load_bench_script
from diffmic_jax import evaluate, train_state

dvd = load_bench_script('diffusion_vs_dcg')


def test_deranged_rows_send_every_real_row_elsewhere():
  rng = np.random.default_rng(0)
  for n_real, n in ((2, 2), (5, 8), (31, 32), (1, 4)):
    mask = np.arange(n) < n_real
    rows = dvd.deranged_rows(mask, rng)
    assert sorted(rows.tolist()) == list(range(n))  # a permutation
    assert np.all(rows[n_real:] == np.arange(n_real, n))  # padding stays put
    if n_real > 1:
      assert np.all(rows[:n_real] != np.arange(n_real)) and np.all(rows[:n_real] < n_real)


def test_compare_counts():
  labels = np.array([0, 1, 2, 0])
  eye = np.eye(3)
  dcg = eye[[0, 1, 1, 2]] * 0.8 + 0.2 / 3  # right, right, wrong, wrong
  diff = eye[[0, 2, 2, 1]] * 0.8 + 0.2 / 3  # right, wrong, right, wrong
  r = dvd.compare(labels, dcg, diff, dcg, 3)
  assert r['dcg_accuracy'] == 0.5 and r['diffusion_accuracy'] == 0.5
  assert r['agreement'] == 0.25 and r['disagreements'] == 3
  assert r['disagreements_dcg_right'] == 1 and r['disagreements_diffusion_right'] == 1
  assert r['shuffled_encoder_accuracy'] == 0.5 and r['shuffled_encoder_agreement_with_dcg'] == 1.0


def test_encoder_images_change_only_the_diffusion():
  config = demo.get_config('smoke')
  models = train_state.build_models(config, steps_per_epoch=3)
  state = train_state.init_state(models, jax.random.key(0), config.image_size)
  npz = np.load(demo.__file__.replace('configs/demo.py', 'diffmic_jax/data/demo/retinamnist.npz'))
  images = npz['test_images'][:6]
  predict = dvd.make_predict_fn(models, evaluate.SamplerSpec('matched', 5, 2))
  args = (state.dcg.variables(), state.eps.variables(state.eps.params), images, jax.random.key(1))
  plain, same, other = predict(*args), predict(*args, images), predict(*args, images[::-1])
  np.testing.assert_array_equal(plain['sample_probs'], same['sample_probs'])
  np.testing.assert_array_equal(plain['dcg_prob'], other['dcg_prob'])
  assert np.abs(plain['sample_probs'] - other['sample_probs']).max() > 1e-6
  # Without encoder images it is the package's predict function.
  package = evaluate.make_predict_fn(models, evaluate.SamplerSpec('matched', 5, 2))(*args)
  np.testing.assert_array_equal(plain['sample_probs'], package['sample_probs'])
