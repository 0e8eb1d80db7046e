"""The report files: strict JSON, the DCG-vs-diffusion table, PNGs, predictions CSV, saliency."""

import csv
import json

import numpy as np
from PIL import Image
import pytest

from diffmic_jax import calibration, metrics
from diffmic_jax import report


def _results(k=3, n=60, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, k, n)

  def probs(strength):
    logits = rng.normal(size=(n, k)) + strength * np.eye(k)[labels]
    return np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)

  samples = np.stack([probs(2.0) for _ in range(5)])
  summary = metrics.summarize_samples(samples)
  return {
      'split': 'test', 'protocol': 'best val accuracy; DDIM 10 steps x 5 samples', 'n': n,
      'dcg': metrics.classification_metrics(labels, probs(1.0), k),
      'diffusion': metrics.classification_metrics(labels, summary['mean_prob'], k),
      'vote': metrics.classification_metrics(labels, summary['mean_prob'], k,
                                             pred=summary['vote']),
      'mean_uncertainty': np.float32(summary['uncertainty'].mean()),  # numpy value on purpose
  }


def _check_png(path):
  with Image.open(path) as im:
    im.verify()
  with Image.open(path) as im:
    assert im.format == 'PNG' and im.size[0] > 100 and im.size[1] > 100
    assert np.asarray(im.convert('L')).std() > 0  # not a blank canvas


def test_write_report_files(tmp_path):
  res = _results()
  paths = report.write_report(res, str(tmp_path / 'reports'), 'test')
  assert set(paths) == {'json', 'txt', 'confusion', 'reliability'}
  with open(paths['json']) as f:
    loaded = json.load(f)
  assert loaded['split'] == 'test'
  assert loaded['diffusion']['confusion_matrix'] == res['diffusion']['confusion_matrix']
  assert isinstance(loaded['mean_uncertainty'], float)
  txt = open(paths['txt']).read()
  for word in ('DCG alone', 'diffusion (mean)', 'diffusion (vote)', 'diffusion - DCG',
               'quadratic kappa', 'per class', res['protocol']):
    assert word in txt, word
  acc_line = next(line for line in txt.splitlines() if line.startswith('accuracy'))
  delta = res['diffusion']['accuracy'] - res['dcg']['accuracy']
  assert f'{delta:+.4f}' in acc_line
  _check_png(paths['confusion'])
  _check_png(paths['reliability'])


def test_report_with_calibration_tables_and_selective_plot(tmp_path):
  """The probability and uncertainty tables, the selective plot and the calibrated reliability
  curve, from calibration.assess on sampled y_0 around the labels."""
  rng = np.random.default_rng(3)
  k, n = 3, 80
  labels = rng.integers(0, k, n)
  y0 = np.eye(k)[labels][None] + rng.normal(0, 0.8, (4, n, k))
  res = _results(k=k, n=n)
  res['calibration'] = calibration.assess(labels, y0, np.full((n, k), 1 / k), 0.3)
  paths = report.write_report(res, str(tmp_path), 'test')
  _check_png(paths['selective'])
  txt = open(paths['txt']).read()
  for word in ('temperature T = 0.3000', 'diffusion, temperature-scaled', 'Brier', 'AURC',
               'DCG: 1 - max probability', "CARD"):
    assert word in txt, word
  loaded = json.load(open(paths['json']))
  assert len(loaded['calibration']['selective']['dcg_one_minus_max']['coverage']) == n


def test_format_table_without_vote_and_with_undefined_auc():
  res = _results(k=3)
  res.pop('vote')
  res['class_names'] = ['mild', 'moderate', 'severe']
  res['dcg']['auc_ovr_macro'] = None
  table = report.format_table(res)
  assert 'n/a' in table and 'severe' in table
  assert len(table.splitlines()) > 15


def test_predictions_csv_round_trip(tmp_path):
  rng = np.random.default_rng(1)
  n, k = 7, 4
  mean_prob = rng.dirichlet(np.ones(k), n)
  dcg_prob = rng.dirichlet(np.ones(k), n)
  vote = mean_prob.argmax(-1)
  uncertainty = metrics.normalized_entropy(mean_prob)
  ids = np.arange(10, 10 + n)
  labels = rng.integers(0, k, n)
  path = report.write_predictions_csv(str(tmp_path / 'p.csv'), ids, labels, mean_prob, vote,
                                      uncertainty, dcg_prob)
  with open(path) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == n
  assert list(rows[0]) == (['id', 'label', 'pred'] + [f'p_{c}' for c in range(k)]
                           + ['uncertainty', 'dcg_pred'] + [f'dcg_p_{c}' for c in range(k)])
  assert [int(r['id']) for r in rows] == ids.tolist()
  assert [int(r['label']) for r in rows] == labels.tolist()
  assert [int(r['pred']) for r in rows] == vote.tolist()
  assert [int(r['dcg_pred']) for r in rows] == dcg_prob.argmax(-1).tolist()
  got = np.array([[float(r[f'p_{c}']) for c in range(k)] for r in rows])
  np.testing.assert_allclose(got, mean_prob, atol=1e-6)
  np.testing.assert_allclose([float(r['uncertainty']) for r in rows], uncertainty, atol=1e-6)


def test_predictions_csv_names_no_labels_and_agreement(tmp_path):
  mean_prob = np.array([[0.8, 0.2], [0.3, 0.7]])
  path = report.write_predictions_csv(
      str(tmp_path / 'p.csv'), ['a.jpg', 'b.jpg'], None, mean_prob, [0, 1], [0.7, 0.9],
      mean_prob, class_names=['benign', 'malignant'], vote_agreement=[1.0, 0.5])
  with open(path) as f:
    rows = list(csv.DictReader(f))
  assert rows[1]['id'] == 'b.jpg' and rows[1]['label'] == '' and rows[1]['label_name'] == ''
  assert rows[1]['pred_name'] == 'malignant' and float(rows[1]['vote_agreement']) == 0.5
  path = report.write_predictions_csv(
      str(tmp_path / 'x.csv'), ['a.jpg', 'b.jpg'], None, mean_prob, [0, 1], [0.7, 0.9],
      mean_prob, vote_agreement=[1.0, 0.5], extra={'ttest_p': [0.01, 1.0], 'vote_p_0': [1, 0.5]})
  with open(path) as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0])[5:9] == ['uncertainty', 'vote_agreement', 'ttest_p', 'vote_p_0']
  assert float(rows[0]['ttest_p']) == 0.01 and float(rows[1]['vote_p_0']) == 0.5
  with pytest.raises(ValueError, match='vote has 1 rows'):
    report.write_predictions_csv(str(tmp_path / 'q.csv'), [0, 1], None, mean_prob, [0], [0, 0],
                                 mean_prob)


def test_saliency_overlay_on_a_real_image(tmp_path, data_root):
  folder = data_root / 'ham10000_224' / 'images'
  files = sorted(folder.glob('*.jpg'))
  if not files:
    pytest.skip(f'no images in {folder}')
  image = np.asarray(Image.open(files[0]).convert('RGB'))
  h, w = image.shape[:2]
  rng = np.random.default_rng(0)
  saliency = rng.random((7, 7, 7))
  boxes = np.array([[10, 20, 90, 110], [100, 100, h - 1, w - 1], [0, 0, 50, 50]])
  attention = np.array([0.5, 0.3, 0.2])
  for name, kwargs in (('sum', {}), ('cls', {'cls': 3}), ('2d', {})):
    sal = saliency[..., 0] if name == '2d' else saliency
    path = report.save_saliency_overlay(str(tmp_path / f'{name}.png'), image, sal, boxes,
                                        attention if name != '2d' else None,
                                        title=f'{files[0].name}', **kwargs)
    _check_png(path)
  # A normalised float image (what the model sees) is shown too, rescaled.
  _check_png(report.save_saliency_overlay(str(tmp_path / 'float.png'),
                                          (image - 120.0) / 60.0, saliency, boxes[:1]))
