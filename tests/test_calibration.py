"""Calibrated probabilities and sample-based uncertainty on hand-computed numbers."""

import math

import numpy as np
import pytest
from scipy import stats

from diffmic_jax import calibration, metrics


def test_tempered_is_a_power_of_the_probabilities_and_keeps_the_argmax():
  p = np.array([[0.5, 0.3, 0.2]])
  np.testing.assert_allclose(calibration.tempered(p, 1.0), p)
  np.testing.assert_allclose(calibration.tempered(p, 0.5), [[0.25 / 0.38, 0.09 / 0.38, 0.04 / 0.38]])
  np.testing.assert_allclose(calibration.tempered(p, 1e6), [[1 / 3] * 3], atol=1e-6)
  # One sample: exactly softmax(y_0 / T).
  y0 = np.array([[1.0, 0.2, -0.3, 0.0, 0.1]])
  soft = lambda z: np.exp(z) / np.exp(z).sum(-1, keepdims=True)
  np.testing.assert_allclose(calibration.tempered(soft(y0), 0.3), soft(y0 / 0.3))


def test_fit_temperature_recovers_the_accuracy_of_one_hot_read_outs():
  """softmax of a one-hot y_0 gives p_max = e / (e + 4) for K = 5 whatever the accuracy; with
  80% right, the NLL is lowest where p_max = 0.8: e^(1/T) = 16, T = 1 / ln 16."""
  k, n = 5, 1000
  pred = np.arange(n) % k
  labels = pred.copy()
  labels[:200] = (pred[:200] + 1 + np.arange(200) % 4) % k  # 200 wrong, spread over classes.
  probs = np.exp(np.eye(k)[pred]) / (math.e + k - 1)
  t = calibration.fit_temperature(labels, probs)
  assert t == pytest.approx(1 / math.log(16), rel=1e-4)
  np.testing.assert_allclose(calibration.tempered(probs, t).max(-1), 0.8, rtol=1e-4)
  assert metrics.nll(labels, calibration.tempered(probs, t)) < metrics.nll(labels, probs)


def test_vote_distribution_interval_width_and_top_two():
  sample_probs = np.array([[[0.6, 0.3, 0.1]], [[0.2, 0.7, 0.1]], [[0.5, 0.4, 0.1]],
                           [[0.9, 0.05, 0.05]]])  # M = 4, N = 1, K = 3
  votes = calibration.vote_distribution(sample_probs)
  np.testing.assert_allclose(votes, [[0.75, 0.25, 0.0]])
  np.testing.assert_array_equal(calibration.top_two(votes, sample_probs.mean(0)), [[0, 1]])
  # Ties in votes go to the larger mean probability.
  np.testing.assert_array_equal(calibration.top_two([[0.5, 0.5, 0.0]], [[0.3, 0.6, 0.1]]), [[1, 0]])
  y0 = np.zeros((5, 2, 3))
  y0[:, 0, 1] = [0, 1, 2, 3, 4]  # Percentiles 2.5 and 97.5 of 0..4 (linear): 0.1 and 3.9.
  np.testing.assert_allclose(calibration.interval_width(y0, [1, 1]), [3.8, 0.0])
  np.testing.assert_allclose(calibration.interval_width(y0[:1], [1, 0]), [0.0, 0.0])


def test_ttest_pvalue_is_the_paired_t_test_and_handles_degenerate_samples():
  a = np.array([0.6, 0.7, 0.8, 0.65])
  b = np.array([0.3, 0.2, 0.1, 0.3])
  d = a - b
  t = d.mean() / (d.std(ddof=1) / 2)  # sqrt(M) = 2
  probs = np.zeros((4, 4, 3))
  probs[:, 0, 0], probs[:, 0, 1] = a, b
  probs[:, 1, :2] = 0.5                                     # the two classes tie in every sample
  probs[:, 2, 0], probs[:, 2, 1] = 0.7, 0.2                 # a constant, non-zero difference
  probs[:, 3, 0], probs[:, 3, 1] = [0.5, 0.4, 0.5, 0.4], [0.4, 0.5, 0.4, 0.5]
  p = calibration.ttest_pvalue(probs, np.tile([0, 1], (4, 1)))
  assert p[0] == pytest.approx(2 * stats.t.sf(t, 3)) and p[0] < 0.05
  assert p[1] == 1.0 and p[2] == 0.0 and p[3] == pytest.approx(1.0)
  np.testing.assert_array_equal(calibration.ttest_pvalue(probs[:1], np.tile([0, 1], (4, 1))),
                                [0.0, 1.0, 0.0, 0.0])  # M = 1: only the sign is known.


def test_brier_and_selective_curve_by_hand():
  assert calibration.brier([0, 1], [[1.0, 0.0], [0.75, 0.25]]) == pytest.approx((0 + 2 * 0.5625) / 2)
  curve = calibration.selective_curve([0.3, 0.1, 0.4, 0.2], [1, 1, 0, 1])
  # Most certain first: 1, 1, 1, 0 -> accuracies 1, 1, 1, 3/4.
  np.testing.assert_allclose(curve['accuracy'], [1, 1, 1, 0.75])
  np.testing.assert_allclose(curve['coverage'], [0.25, 0.5, 0.75, 1.0])
  assert curve['aurc'] == pytest.approx(0.25 / 4)
  assert curve['accuracy_certain_half'] == 1.0 and curve['accuracy_uncertain_half'] == 0.5
  # The reverse order ranks errors worst: 0, 1/2, 2/3, 3/4.
  worst = calibration.selective_curve([0.2, 0.3, 0.1, 0.4], [1, 1, 0, 1])
  assert worst['aurc'] == pytest.approx((1 + 0.5 + 1 / 3 + 0.25) / 4)


def test_assess_keeps_the_argmax_and_ranks_on_real_samples():
  """Random sampled y_0 around one-hot labels: the reported probabilities' argmax is that of the
  official mean probability (accuracy unchanged), their uncertainty spans [0, 1] and the
  calibrated probabilities' NLL is no worse than the official read-out's."""
  rng = np.random.default_rng(0)
  m, n, k = 8, 400, 5
  labels = rng.integers(0, k, n)
  guess = np.where(rng.random(n) < 0.7, labels, rng.integers(0, k, n))
  y0 = np.eye(k)[guess][None] + rng.normal(0, 0.4, (m, n, k))
  dcg = np.full((n, k), 0.1)
  dcg[np.arange(n), guess] = 0.6
  t = calibration.fit_temperature(labels, calibration.per_image(y0, 1.0)['mean_prob'])
  fitted = calibration.assess(labels, y0, dcg, t)
  img = calibration.per_image(y0, t)
  official = metrics.summarize_samples(np.exp(y0) / np.exp(y0).sum(-1, keepdims=True))['mean_prob']
  np.testing.assert_array_equal(img['probs'].argmax(-1), official.argmax(-1))
  probs = fitted['probabilities']
  assert probs['temperature']['accuracy'] == probs['mean']['accuracy']
  assert probs['temperature']['nll'] < probs['mean']['nll']
  assert probs['temperature']['ece'] < probs['mean']['ece']
  assert t < 1  # The one-hot scale is too flat.
  unc = fitted['uncertainty']['entropy_calibrated']
  assert unc['spread']['max'] - unc['spread']['min'] > 0.5
  assert unc['accuracy_certain_half'] > unc['accuracy_uncertain_half']
  assert set(fitted['selective']) == {'entropy_calibrated', 'dcg_one_minus_max'}


def test_temperature_file_round_trip_and_bad_values(tmp_path):
  path = tmp_path / 'calibration' / 'step_7.json'
  assert calibration.load_temperature(path) is None
  calibration.save_temperature(path, 0.42, fitted_on='validation', n=3)
  assert calibration.load_temperature(path) == {'temperature': 0.42, 'fitted_on': 'validation',
                                                'n': 3}
  path.write_text('{"temperature": -1}')
  with pytest.raises(ValueError, match='step_7.json: temperature must be a positive number'):
    calibration.load_temperature(path)


def test_over_seeds_gives_mean_and_sample_std():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 3, 50)
  runs = [calibration.assess(labels, np.eye(3)[labels][None] + rng.normal(0, s, (4, 50, 3)),
                             np.full((50, 3), 1 / 3), t) for s, t in ((0.5, 0.3), (1.0, 0.6))]
  got = calibration.over_seeds(runs)
  assert got['temperature'] == {'mean': pytest.approx(0.45), 'std': pytest.approx(0.15 * math.sqrt(2)),
                                'values': [0.3, 0.6]}
  aurc = [r['uncertainty']['ttest_p']['aurc'] for r in runs]
  assert got['uncertainty']['ttest_p']['aurc']['mean'] == pytest.approx(np.mean(aurc))
  assert got['probabilities']['vote']['nll']['std'] == pytest.approx(
      np.std([r['probabilities']['vote']['nll'] for r in runs], ddof=1))
