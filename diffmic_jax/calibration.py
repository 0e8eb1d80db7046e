"""Readable probabilities and uncertainty from the diffusion's M sampled label vectors per image.

The official read-out, softmax(y_0), lives on the scale of one-hot label vectors: even a perfect
one-hot y_0 gives a top probability of e / (e + K - 1), so its numbers cannot be read however good
the ranking. What is built here from the samples, pure numpy:

- the vote distribution: the fraction of samples whose argmax is each class;
- a temperature T, one scalar fitted by NLL on the validation split (Guo et al., ICML 2017), on
  log p, p the mean over samples of softmax(y_0): softmax(log p / T). For one sample this is
  exactly softmax(y_0 / T); for any number it keeps the argmax of p, so the prediction never moves;
- CARD's sample-based measures (Han et al., NeurIPS 2022): the width of the central 95% interval
  of the predicted class's y_0 across samples, and a paired two-sample t-test between the samples'
  probabilities of the two most voted classes (its p-value: large = the two are not told apart);
- how well an uncertainty ranks errors: accuracy on the most and least certain halves, and the
  selective-classification curve (accuracy against coverage) with its area AURC (Geifman and
  El-Yaniv, NeurIPS 2017; lower is better).
"""

import json
import math

import numpy as np
from etils import epath
from scipy import optimize, stats

from diffmic_jax import metrics

# The temperature is searched on log T over this range; far outside it softmax saturates.
_LOG_T_BOUNDS = (math.log(1e-3), math.log(1e3))
INTERVAL = (2.5, 97.5)  # CARD's PICP_range: the central 95% of the samples.


def _log_probs(probs) -> np.ndarray:
  p = np.clip(np.asarray(probs, np.float64), 1e-12, None)
  return np.log(p / p.sum(-1, keepdims=True))


def softmax(z) -> np.ndarray:
  """softmax over the last axis, shifted by the max so large y_0 / T cannot overflow."""
  z = np.exp(np.asarray(z, np.float64) - np.max(z, -1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def tempered(probs, temperature: float) -> np.ndarray:
  """softmax(log p / T) of (N, K) probabilities p: T < 1 sharpens, T > 1 flattens, argmax kept."""
  return softmax(_log_probs(probs) / float(temperature))


def fit_temperature(labels, probs) -> float:
  """The T > 0 that minimises the NLL of tempered(probs, T) on labelled (N, K) probabilities."""
  labels = np.asarray(labels).astype(int)
  logp = _log_probs(probs)

  def loss(log_t):
    z = logp / math.exp(log_t)
    z = z - z.max(-1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(len(labels)), labels]))

  res = optimize.minimize_scalar(loss, bounds=_LOG_T_BOUNDS, method='bounded',
                                 options={'xatol': 1e-6})
  return float(math.exp(res.x))


def vote_distribution(sample_probs) -> np.ndarray:
  """(N, K) fraction of the M samples whose argmax is each class, from (M, N, K)."""
  probs = np.asarray(sample_probs)
  m, _, k = probs.shape
  return np.stack([(probs.argmax(-1) == c).sum(0) for c in range(k)], -1) / m


def interval_width(sample_y0, cls) -> np.ndarray:
  """CARD's prediction interval width: the 2.5-97.5 percentile range of y_0[cls] over samples.

  Args:
    sample_y0: (M, N, K) sampled label vectors (before the softmax).
    cls: (N,) the class whose interval is measured, usually the prediction.

  Returns:
    (N,) widths >= 0, in y_0's units (one-hot labels are 1 apart); 0 when M = 1.
  """
  y = np.asarray(sample_y0, np.float64)
  picked = y[:, np.arange(y.shape[1]), np.asarray(cls).astype(int)]  # (M, N)
  lo, hi = np.percentile(picked, INTERVAL, axis=0)
  return hi - lo


def ttest_pvalue(sample_probs, top2) -> np.ndarray:
  """p-value of CARD's paired two-sided t-test between two classes' probabilities over samples.

  Args:
    sample_probs: (M, N, K) per-sample probabilities.
    top2: (N, 2) the two classes compared, usually the two most voted.

  Returns:
    (N,) p-values in [0, 1]: near 0 = the samples separate the two classes, 1 = they do not.
    With M < 2, or samples whose difference never varies, the test is undefined: 1 if the two
    classes tie in every sample, else 0.
  """
  probs = np.asarray(sample_probs, np.float64)
  n = probs.shape[1]
  top2 = np.asarray(top2).astype(int)
  a = probs[:, np.arange(n), top2[:, 0]]
  b = probs[:, np.arange(n), top2[:, 1]]
  diff = a - b
  degenerate = (probs.shape[0] < 2) | np.all(diff == diff[:1], axis=0)
  p = np.ones(n)
  if (~degenerate).any():
    p[~degenerate] = stats.ttest_rel(a[:, ~degenerate], b[:, ~degenerate], axis=0).pvalue
  p[degenerate] = np.where(np.all(diff[:, degenerate] == 0, axis=0), 1.0, 0.0)
  return np.clip(np.nan_to_num(p, nan=1.0), 0.0, 1.0)


def top_two(votes, mean_prob) -> np.ndarray:
  """(N, 2) the two most voted classes, ties broken by the larger mean probability."""
  key = np.asarray(votes, np.float64) + 1e-6 * np.asarray(mean_prob, np.float64)
  return np.argsort(-key, axis=-1, kind='stable')[:, :2]


def brier(labels, probs) -> float:
  """Mean over images of sum_k (p_k - onehot_k)^2, in [0, 2]."""
  probs = np.asarray(probs, np.float64)
  onehot = np.eye(probs.shape[-1])[np.asarray(labels).astype(int)]
  return float(np.mean(((probs - onehot) ** 2).sum(-1)))


def selective_curve(uncertainty, correct) -> dict:
  """Accuracy against coverage when the most uncertain images are set aside first.

  Args:
    uncertainty: (N,) larger = less certain (ties are kept in a stable order).
    correct: (N,) whether each prediction is right.

  Returns:
    coverage (N,) k/N for k = 1..N, accuracy (N,) on the k most certain images, aurc: the mean
    over k of the error rate on the k most certain (the area under the risk-coverage curve; lower
    is better; a random order gives about the overall error rate), accuracy on the most certain
    half and on the least certain half.
  """
  u = np.asarray(uncertainty, np.float64)
  c = np.asarray(correct, np.float64)
  order = np.argsort(u, kind='stable')
  hits = np.cumsum(c[order])
  k = np.arange(1, len(u) + 1)
  acc = hits / k
  half = len(u) // 2
  return {'coverage': k / len(u), 'accuracy': acc, 'aurc': float(np.mean(1.0 - acc)),
          'accuracy_certain_half': float(c[order[:max(half, 1)]].mean()),
          'accuracy_uncertain_half': float(c[order[half:]].mean())}


def spread(values) -> dict:
  """min, 5th percentile, median, 95th percentile, max and mean: does a measure span its range?"""
  v = np.asarray(values, np.float64)
  q = np.percentile(v, [0, 5, 50, 95, 100])
  return {'min': q[0], 'p5': q[1], 'median': q[2], 'p95': q[3], 'max': q[4], 'mean': v.mean()}


# What evaluate and predict report as the diffusion's probabilities and uncertainty, chosen by
# validation NLL / ECE and AURC (docs/experiments.md): the other candidates stay in the reports.
PROBABILITIES = 'temperature'
UNCERTAINTY = 'entropy_calibrated'


def per_image(sample_y0, temperature: float) -> dict:
  """What predictions.csv holds per image, from (M, N, K) sampled y_0 and the fitted T.

  Returns:
    mean_prob (N, K) the official mean of softmax(y_0); probs (N, K) its tempered form, the
    reported probabilities; votes (N, K) the vote distribution; pred (N,) their argmax (that of
    mean_prob); uncertainty (N,) the normalised entropy of probs; interval_width (N,) of the
    predicted class's y_0; ttest_p (N,) between the two most voted classes.
  """
  y0 = np.asarray(sample_y0, np.float64)
  sample_probs = softmax(y0)
  mean_prob = sample_probs.mean(0)
  probs = tempered(mean_prob, temperature)
  votes = vote_distribution(sample_probs)
  pred = mean_prob.argmax(-1)
  return {'mean_prob': mean_prob, 'probs': probs, 'votes': votes, 'pred': pred,
          'uncertainty': metrics.normalized_entropy(probs),
          'interval_width': interval_width(y0, pred),
          'ttest_p': ttest_pvalue(sample_probs, top_two(votes, mean_prob))}


def _scores(labels, probs) -> dict:
  m = metrics.classification_metrics(labels, probs, probs.shape[-1])
  return {'accuracy': m['accuracy'], 'ece': m['ece'], 'nll': m['nll'],
          'brier': brier(labels, probs), 'auc_ovr_macro': m['auc_ovr_macro'],
          'reliability': m['reliability']}


def assess(labels, sample_y0, dcg_prob, temperature: float) -> dict:
  """Calibration and error ranking of every candidate, beside the DCG's, for a labelled split.

  Returns:
    temperature; probabilities {name: accuracy, ece, nll, brier, auc_ovr_macro} for 'dcg',
    'mean' (the official softmax read-out), 'temperature', 'vote'; uncertainty {name: aurc,
    accuracy on the certain / uncertain half, spread} for the diffusion's candidates (ranking the
    errors of the argmax of the mean probability) and the DCG's 1 - max probability and entropy;
    selective: coverage and accuracy curves of the chosen uncertainty and of the DCG's
    1 - max probability; chosen: which candidates evaluate and predict report.
  """
  labels = np.asarray(labels).astype(int)
  dcg_prob = np.asarray(dcg_prob, np.float64)
  img = per_image(sample_y0, temperature)
  probs = {'dcg': dcg_prob, 'mean': img['mean_prob'], 'temperature': img['probs'],
           'vote': img['votes']}
  right = img['pred'] == labels
  dcg_right = dcg_prob.argmax(-1) == labels
  candidates = {
      'entropy_calibrated': (img['uncertainty'], right),
      'entropy_mean': (metrics.normalized_entropy(img['mean_prob']), right),
      'one_minus_max_calibrated': (1 - img['probs'].max(-1), right),
      'one_minus_vote_agreement': (1 - img['votes'][np.arange(len(labels)), img['pred']], right),
      'interval_width': (img['interval_width'], right),
      'ttest_p': (img['ttest_p'], right),
      'dcg_one_minus_max': (1 - dcg_prob.max(-1), dcg_right),
      'dcg_entropy': (metrics.normalized_entropy(dcg_prob), dcg_right),
  }
  uncertainty, curves = {}, {}
  for name, (u, ok) in candidates.items():
    curve = selective_curve(u, ok)
    curves[name] = curve
    uncertainty[name] = {k: v for k, v in curve.items() if k not in ('coverage', 'accuracy')}
    uncertainty[name]['spread'] = spread(u)
  chosen = UNCERTAINTY
  return {'temperature': float(temperature),
          'probabilities': {k: _scores(labels, p) for k, p in probs.items()},
          'uncertainty': uncertainty,
          'selective': {k: {'coverage': curves[k]['coverage'].tolist(),
                            'accuracy': curves[k]['accuracy'].tolist()}
                        for k in (chosen, 'dcg_one_minus_max')},
          'chosen': {'probabilities': PROBABILITIES, 'uncertainty': chosen}}


def seed_summary(vals) -> dict:
  """Mean, sample standard deviation (0 for one run) and the values of one number over runs."""
  return {'mean': float(np.mean(vals)), 'values': [float(v) for v in vals],
          'std': float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0}


def over_seeds(assessed: list[dict]) -> dict:
  """seed_summary of each of `assess`'s numbers over runs (seeds)."""
  first = assessed[0]
  return {
      'temperature': seed_summary([a['temperature'] for a in assessed]),
      'probabilities': {k: {m: seed_summary([a['probabilities'][k][m] for a in assessed])
                            for m in ('accuracy', 'ece', 'nll', 'brier', 'auc_ovr_macro')}
                        for k in first['probabilities']},
      'uncertainty': {k: {**{m: seed_summary([a['uncertainty'][k][m] for a in assessed])
                             for m in ('aurc', 'accuracy_certain_half', 'accuracy_uncertain_half')},
                          **{f'spread_{m}': seed_summary(
                                 [a['uncertainty'][k]['spread'][m] for a in assessed])
                             for m in ('min', 'median', 'max')}}
                      for k in first['uncertainty']}}


def save_temperature(path, temperature: float, **meta) -> None:
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({'temperature': float(temperature), **meta}, indent=2))


def load_temperature(path) -> dict | None:
  """The saved {'temperature', ...}, or None when there is none."""
  path = epath.Path(path)
  if not path.exists():
    return None
  saved = json.loads(path.read_text())
  t = saved.get('temperature')
  if not isinstance(t, (int, float)) or not t > 0 or not math.isfinite(t):
    raise ValueError(f'{path}: temperature must be a positive number, got {t!r}')
  return saved
