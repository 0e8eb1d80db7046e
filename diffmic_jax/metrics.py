"""Whole-split classification metrics and the summary of M sampled label vectors per image.

Everything is computed once over the whole split (the official code averages accuracy and kappa
over batches, which weights a small last batch like a full one). Values come back as plain Python
numbers and lists, ready for JSON: a metric that is undefined on a split (AUC of a class with no
positives) is None with a line in 'notes', never NaN. Pure numpy / scikit-learn, no JAX.
"""

import numpy as np
from sklearn import metrics as skm

ECE_BINS = 15


def summarize_samples(sample_probs) -> dict:
  """Combines M per-sample class probabilities per image into one prediction and its uncertainty.

  Args:
    sample_probs: (M, N, K) class probabilities of M reverse-diffusion samples for N images;
      an (N, K) array counts as M = 1.

  Returns:
    mean_prob (N, K): mean over samples; vote (N,): majority of the per-sample argmax, ties going
    to the class with the larger mean_prob; vote_agreement (N,): fraction of samples that agree
    with the vote (1 when M = 1); uncertainty (N,): entropy of mean_prob divided by log K
    (0 = one class certain, 1 = uniform).
  """
  probs = np.asarray(sample_probs, np.float64)
  if probs.ndim == 2:
    probs = probs[None]
  if probs.ndim != 3 or 0 in probs.shape:
    raise ValueError(f'sample_probs must be (M, N, K) with M, N, K > 0, got shape {probs.shape}')
  m, n, k = probs.shape
  mean_prob = probs.mean(axis=0)
  counts = np.zeros((n, k))
  np.add.at(counts, (np.broadcast_to(np.arange(n), (m, n)), probs.argmax(-1)), 1)
  tied = counts == counts.max(-1, keepdims=True)
  vote = np.argmax(np.where(tied, np.nan_to_num(mean_prob, nan=-1.0), -np.inf), axis=-1)
  return {'mean_prob': mean_prob, 'vote': vote,
          'vote_agreement': counts[np.arange(n), vote] / m,
          'uncertainty': normalized_entropy(mean_prob)}


def normalized_entropy(probs) -> np.ndarray:
  """Entropy of each row of (N, K) probabilities divided by log K, clipped to [0, 1]."""
  probs = np.asarray(probs, np.float64)
  k = probs.shape[-1]
  if k < 2:
    return np.zeros(probs.shape[:-1])
  p = np.clip(np.nan_to_num(probs, nan=1.0 / k), 1e-12, 1.0)
  p = p / p.sum(-1, keepdims=True)
  return np.clip(-(p * np.log(p)).sum(-1) / np.log(k), 0.0, 1.0)


def nll(labels, probs) -> float:
  """Mean negative log-likelihood of the true classes (probabilities clipped at 1e-12)."""
  probs = np.asarray(probs)
  return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0))))


def _bin_index(conf, bins: int) -> np.ndarray:
  """Bin b holds confidences in (b/bins, (b+1)/bins]; confidence 0 goes to bin 0."""
  edges = np.linspace(0, 1, bins + 1)
  return np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)


def expected_calibration_error(labels, probs, bins: int = ECE_BINS) -> float:
  """ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)| of the top-class confidence, equal-width bins."""
  conf = probs.max(-1)
  correct = probs.argmax(-1) == labels
  which = _bin_index(conf, bins)
  ece = 0.0
  for b in range(bins):
    sel = which == b
    if sel.any():
      ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
  return float(ece)


def reliability_bins(labels, probs, bins: int = ECE_BINS) -> dict:
  """Per-bin mean confidence, accuracy and count (None for an empty bin), for the diagram."""
  conf = probs.max(-1)
  correct = probs.argmax(-1) == labels
  which = _bin_index(conf, bins)
  out = {'edges': np.linspace(0, 1, bins + 1).tolist(), 'confidence': [], 'accuracy': [],
         'count': []}
  for b in range(bins):
    sel = which == b
    out['count'].append(int(sel.sum()))
    out['confidence'].append(float(conf[sel].mean()) if sel.any() else None)
    out['accuracy'].append(float(correct[sel].mean()) if sel.any() else None)
  return out


def _auc_ovr(labels, probs, num_classes: int) -> tuple:
  """Macro one-vs-rest AUC over the classes with both positives and negatives in `labels`."""
  per_class, notes = [], []
  for c in range(num_classes):
    pos = labels == c
    if pos.all() or not pos.any():
      per_class.append(None)
      notes.append(f'class {c}: AUC skipped ({"no" if not pos.any() else "only"} positives)')
      continue
    per_class.append(float(skm.roc_auc_score(pos, probs[:, c])))
  valid = [a for a in per_class if a is not None]
  return (float(np.mean(valid)) if valid else None), per_class, notes


def _check_inputs(labels, probs, num_classes: int, pred) -> tuple:
  """Validated int labels, float64 probs (non-finite rows made uniform), int pred, notes."""
  labels = np.asarray(labels)
  probs = np.asarray(probs, np.float64)
  if labels.ndim != 1 or probs.shape != (len(labels), num_classes) or not len(labels):
    raise ValueError(f'expected labels (N,) and probs (N, {num_classes}) with N > 0, got '
                     f'{labels.shape} and {probs.shape}')
  labels = labels.astype(int)
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f'labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}')
  notes = []
  bad = ~np.isfinite(probs).all(-1)
  if bad.any():
    # A diverged sampler must not take the whole report down; it is counted and said instead.
    probs[bad] = 1.0 / num_classes
    notes.append(f'{int(bad.sum())} of {len(labels)} probability rows were not finite; '
                 'counted as uniform')
  pred = probs.argmax(-1) if pred is None else np.asarray(pred).astype(int)
  if pred.shape != labels.shape:
    raise ValueError(f'pred must be (N,) = {labels.shape}, got {pred.shape}')
  return labels, probs, pred, notes


def classification_metrics(labels, probs, num_classes: int, pred=None) -> dict:
  """Accuracy, macro-F1, balanced accuracy, quadratic kappa, per-class P/R/F1, AUC, ECE, NLL.

  Args:
    labels: (N,) true classes in [0, num_classes).
    probs: (N, K) predicted probabilities (rows sum to 1); used for AUC, ECE and NLL.
    num_classes: K.
    pred: (N,) predicted classes for the count-based metrics; defaults to argmax(probs).

  Returns:
    n, accuracy, macro_f1 (over the classes present in labels or pred, as sklearn's default),
    balanced_accuracy (mean recall over classes present in labels), kappa_quadratic, auc_ovr_macro
    (None if no class has positives and negatives), ece, nll, per_class {precision, recall, f1,
    support, auc}, confusion_matrix (K x K, rows = true), reliability (see reliability_bins),
    notes (list of str).
  """
  labels, probs, pred, notes = _check_inputs(labels, probs, num_classes, pred)
  classes = list(range(num_classes))
  p, r, f1, support = skm.precision_recall_fscore_support(labels, pred, labels=classes,
                                                          zero_division=0)
  present = np.isin(classes, np.union1d(labels, pred))
  kappa = _quadratic_kappa(labels, pred, classes, notes)
  auc, auc_per_class, auc_notes = _auc_ovr(labels, probs, num_classes)
  return {
      'n': int(len(labels)),
      'accuracy': float(np.mean(pred == labels)),
      'macro_f1': float(np.mean(f1[present])),
      'balanced_accuracy': float(np.mean(r[support > 0])),
      'kappa_quadratic': kappa,
      'auc_ovr_macro': auc,
      'ece': expected_calibration_error(labels, probs),
      'nll': nll(labels, probs),
      'per_class': {'precision': p.tolist(), 'recall': r.tolist(), 'f1': f1.tolist(),
                    'support': support.astype(int).tolist(), 'auc': auc_per_class},
      'confusion_matrix': skm.confusion_matrix(labels, pred, labels=classes).astype(int).tolist(),
      'reliability': reliability_bins(labels, probs),
      'notes': notes + auc_notes,
  }


def _quadratic_kappa(labels, pred, classes, notes: list) -> float:
  """sklearn's quadratic weighted kappa; when it is 0/0 (one class only), 1 if all right else 0."""
  if len(np.union1d(labels, pred)) < 2:
    notes.append('quadratic kappa undefined (a single class in labels and pred)')
    return 1.0 if np.array_equal(labels, pred) else 0.0
  return float(skm.cohen_kappa_score(labels, pred, labels=classes, weights='quadratic'))
