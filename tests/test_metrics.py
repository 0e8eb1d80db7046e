"""Whole-split metrics against scikit-learn and hand-computed cases; the M-sample summary."""

import json
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from diffmic_jax import metrics


def _one_hot(y, k, hot=1.0):
  p = np.full((len(y), k), (1.0 - hot) / (k - 1))
  p[np.arange(len(y)), y] = hot
  return p


def _random_case(n=200, k=5, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, k, n)
  logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[labels]
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  return labels, probs


def test_perfect_prediction():
  y = np.array([0, 1, 2, 3, 4, 0, 1, 2])
  m = metrics.classification_metrics(y, _one_hot(y, 5), 5)
  for key in ('accuracy', 'macro_f1', 'balanced_accuracy', 'kappa_quadratic', 'auc_ovr_macro'):
    assert m[key] == pytest.approx(1.0), key
  assert m['ece'] == pytest.approx(0.0, abs=1e-12)
  assert m['nll'] == pytest.approx(0.0, abs=1e-9)
  assert m['confusion_matrix'] == np.diag([2, 2, 2, 1, 1]).tolist()
  assert m['n'] == 8 and m['notes'] == []


def test_against_sklearn():
  labels, probs = _random_case()
  pred = probs.argmax(-1)
  m = metrics.classification_metrics(labels, probs, 5)
  assert m['accuracy'] == pytest.approx(skm.accuracy_score(labels, pred))
  assert m['macro_f1'] == pytest.approx(skm.f1_score(labels, pred, average='macro'))
  assert m['balanced_accuracy'] == pytest.approx(skm.balanced_accuracy_score(labels, pred))
  assert m['kappa_quadratic'] == pytest.approx(
      skm.cohen_kappa_score(labels, pred, weights='quadratic'))
  assert m['auc_ovr_macro'] == pytest.approx(
      skm.roc_auc_score(labels, probs, multi_class='ovr', average='macro'))
  assert m['nll'] == pytest.approx(skm.log_loss(labels, probs))
  np.testing.assert_array_equal(m['confusion_matrix'], skm.confusion_matrix(labels, pred))
  p, r, f1, s = skm.precision_recall_fscore_support(labels, pred)
  np.testing.assert_allclose(m['per_class']['precision'], p)
  np.testing.assert_allclose(m['per_class']['recall'], r)
  np.testing.assert_allclose(m['per_class']['f1'], f1)
  assert m['per_class']['support'] == s.tolist()
  json.dumps(m, allow_nan=False)  # plain Python values only


def test_known_confusion_matrix_and_pred_override():
  labels = np.array([0, 0, 0, 1, 1, 2])
  pred = np.array([0, 1, 0, 1, 2, 2])
  probs = _one_hot(np.zeros(6, int), 3, hot=0.5)  # argmax says class 0 everywhere
  m = metrics.classification_metrics(labels, probs, 3, pred=pred)
  assert m['confusion_matrix'] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
  assert m['accuracy'] == pytest.approx(4 / 6)
  assert m['balanced_accuracy'] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
  assert m['per_class']['precision'] == pytest.approx([1.0, 0.5, 0.5])


def test_quadratic_kappa_hand_value():
  # Ordinal grades one step off in half the cases: kappa from its definition.
  labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])
  pred = np.array([0, 1, 2, 3, 1, 2, 3, 2])
  k = 4
  o = skm.confusion_matrix(labels, pred, labels=range(k)).astype(float)
  e = np.outer(o.sum(1), o.sum(0)) / o.sum()
  w = (np.subtract.outer(range(k), range(k)) ** 2) / (k - 1) ** 2
  expected = 1 - (w * o).sum() / (w * e).sum()
  m = metrics.classification_metrics(labels, _one_hot(pred, k, 0.7), k)
  assert m['kappa_quadratic'] == pytest.approx(expected)


def test_ece_calibrated_and_overconfident():
  # In each confidence group the accuracy equals the confidence: ECE = 0.
  labels, probs = [], []
  for conf, n_right in ((0.6, 6), (0.8, 8), (1.0, 10)):
    for i in range(10):
      labels.append(0 if i < n_right else 1)
      probs.append([conf, 1 - conf])
  m = metrics.classification_metrics(np.array(labels), np.array(probs), 2)
  assert m['ece'] == pytest.approx(0.0, abs=1e-12)
  # Always 0.9 sure and right half the time: ECE = 0.4.
  y = np.array([0, 1] * 10)
  m = metrics.classification_metrics(y, np.tile([0.9, 0.1], (20, 1)), 2)
  assert m['ece'] == pytest.approx(0.4)
  rel = m['reliability']
  assert len(rel['count']) == 15 and sum(rel['count']) == 20 and len(rel['edges']) == 16


def test_missing_class_does_not_crash():
  labels = np.array([0, 1, 0, 1, 0, 1])  # class 2 never occurs
  probs = np.array([[.7, .2, .1], [.2, .7, .1], [.5, .3, .2], [.3, .4, .3], [.6, .3, .1],
                    [.1, .1, .8]])
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # no sklearn UndefinedMetric / runtime warnings either
    m = metrics.classification_metrics(labels, probs, 3)
  assert m['per_class']['auc'][2] is None
  assert any('class 2' in n for n in m['notes'])
  expected = np.mean([skm.roc_auc_score(labels == c, probs[:, c]) for c in (0, 1)])
  assert m['auc_ovr_macro'] == pytest.approx(expected)
  assert m['per_class']['support'] == [3, 3, 0]
  json.dumps(m, allow_nan=False)


def test_single_class_split_and_nonfinite_probs():
  y = np.zeros(4, int)
  m = metrics.classification_metrics(y, _one_hot(y, 3, 0.9), 3)
  assert m['auc_ovr_macro'] is None and m['kappa_quadratic'] == 1.0
  probs = _one_hot(np.array([0, 1, 1, 0]), 2, 0.8)
  probs[1] = np.nan
  m = metrics.classification_metrics(np.array([0, 1, 1, 0]), probs, 2)
  assert all(np.isfinite([m['nll'], m['ece'], m['auc_ovr_macro']]))
  assert any('not finite' in n for n in m['notes'])
  json.dumps(m, allow_nan=False)


def test_bad_inputs_are_named():
  with pytest.raises(ValueError, match='labels must lie'):
    metrics.classification_metrics(np.array([0, 3]), np.full((2, 3), 1 / 3), 3)
  with pytest.raises(ValueError, match=r'probs \(N, 4\)'):
    metrics.classification_metrics(np.array([0, 1]), np.full((2, 3), 1 / 3), 4)
  with pytest.raises(ValueError, match='sample_probs'):
    metrics.summarize_samples(np.zeros((2, 3, 4, 5)))


def test_summarize_vote_ties_and_agreement():
  # Image 0: 2 of 3 samples say class 1 although class 0 has the larger mean probability.
  # Image 1: 1-1 tie between classes 0 and 2 (third sample says 1); the mean breaks it.
  s = np.array([
      [[0.1, 0.9, 0.0], [0.5, 0.1, 0.4]],
      [[0.1, 0.9, 0.0], [0.1, 0.1, 0.8]],
      [[1.0, 0.0, 0.0], [0.3, 0.4, 0.3]],
  ])
  out = metrics.summarize_samples(s)
  np.testing.assert_allclose(out['mean_prob'], s.mean(0))
  assert out['vote'].tolist() == [1, 2]
  np.testing.assert_allclose(out['vote_agreement'], [2 / 3, 1 / 3])
  assert out['mean_prob'].shape == (2, 3) and out['uncertainty'].shape == (2,)


def test_summarize_entropy_bounds_and_single_sample():
  certain = np.eye(4)[None]                        # M = 1, one-hot rows
  uniform = np.full((5, 3, 4), 0.25)
  out = metrics.summarize_samples(certain)
  np.testing.assert_allclose(out['uncertainty'], 0.0, atol=1e-9)
  np.testing.assert_allclose(out['vote_agreement'], 1.0)
  assert out['vote'].tolist() == [0, 1, 2, 3]
  np.testing.assert_allclose(metrics.summarize_samples(uniform)['uncertainty'], 1.0)
  _, probs = _random_case(n=50, k=7)
  u = metrics.summarize_samples(probs)['uncertainty']  # (N, K) counts as M = 1
  assert u.shape == (50,) and np.all((u >= 0) & (u <= 1))
  assert np.all(metrics.summarize_samples(np.ones((2, 3, 1)))['uncertainty'] == 0)
