"""What a user reads after an evaluation: a JSON file, a table, plots and per-image predictions.

Every table puts the DCG alone beside the diffusion (mean probability and majority vote) with the
difference, so each report shows what the diffusion adds, and carries its protocol line (split,
checkpoint rule, sampler) so a number is never read without how it was made. matplotlib runs on
the Agg backend: files only, no display on servers and CI. Files go through `etils.epath`, so
out_dir may be local or a URL such as gs://bucket/run/reports; figures are rendered to bytes
first because matplotlib writes only to local files and file objects.
"""

import csv
import io
import json
import math

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from etils import epath  # noqa: E402

# (key, label, higher is better); AUC, ECE and NLL come from mean_prob, so the vote repeats them.
_ROWS = (('accuracy', 'accuracy', True), ('macro_f1', 'macro F1', True),
         ('balanced_accuracy', 'balanced accuracy', True),
         ('kappa_quadratic', 'quadratic kappa', True), ('auc_ovr_macro', 'AUC (OvR macro)', True),
         ('ece', 'ECE (15 bins)', False), ('nll', 'NLL', False))
_COLS = ('DCG alone', 'diffusion (mean)', 'diffusion (vote)', 'diffusion - DCG', 'better')


def _num(v, fmt: str = '.4f') -> str:
  return 'n/a' if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def _metric_rows(dcg: dict, diff: dict, vote: dict | None) -> list:
  rows = []
  for key, label, higher in _ROWS:
    a, b = dcg.get(key), diff.get(key)
    delta = None if a is None or b is None else b - a
    if delta is None:
      better = ''
    elif abs(delta) < 5e-5:
      better = 'tie'
    else:
      better = 'diffusion' if (delta > 0) == higher else 'DCG'
    rows.append([label, _num(a), _num(b), _num(None if vote is None else vote.get(key)),
                 _num(delta, '+.4f'), better])
  return rows


def _per_class_rows(dcg: dict, diff: dict, class_names) -> list:
  pd, pc = dcg['per_class'], diff['per_class']
  rows = []
  for c, s in enumerate(pc['support']):
    name = str(class_names[c]) if class_names else str(c)
    rows.append([name, str(s)] + [_num(pd[k][c]) for k in ('precision', 'recall', 'f1')]
                + [_num(pc[k][c]) for k in ('precision', 'recall', 'f1')]
                + [_num(pc['f1'][c] - pd['f1'][c], '+.4f')])
  return rows


def _grid(header, rows) -> list:
  """Left-aligned first column, right-aligned others, widths fitted to the content."""
  widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

  def fmt(row):
    return '  '.join(str(v).ljust(w) if i == 0 else str(v).rjust(w)
                     for i, (v, w) in enumerate(zip(row, widths))).rstrip()

  return [fmt(header), '-' * len(fmt(header))] + [fmt(r) for r in rows]


def format_table(results: dict) -> str:
  """The report as text: protocol, metric rows x (DCG | diffusion mean | vote | delta), per class.

  Args:
    results: {'split', 'protocol', 'dcg', 'diffusion', optional 'vote', optional 'class_names',
      optional 'mean_uncertainty'}; the metric dicts come from metrics.classification_metrics.

  Returns:
    A multi-line string, for the .txt report and for logging.
  """
  dcg, diff, vote = results['dcg'], results['diffusion'], results.get('vote')
  lines = [f"split: {results.get('split', '?')} (n = {diff['n']})",
           f"protocol: {results.get('protocol', '?')}"]
  if results.get('mean_uncertainty') is not None:
    lines.append(f"mean uncertainty (normalised entropy): {results['mean_uncertainty']:.4f}")
  lines += [''] + _grid(('metric',) + _COLS, _metric_rows(dcg, diff, vote))
  lines += ['', 'per class: precision / recall / F1 of the DCG alone and of the diffusion (mean)']
  header = ('class', 'support', 'DCG P', 'DCG R', 'DCG F1', 'diffusion P', 'diffusion R',
            'diffusion F1', 'F1 delta')
  lines += _grid(header, _per_class_rows(dcg, diff, results.get('class_names')))
  if results.get('calibration'):
    lines += [''] + _calibration_lines(results['calibration'])
  notes = [f'{who}: {n}' for who in ('dcg', 'diffusion') for n in results[who].get('notes', [])]
  if notes:
    lines += ['', 'notes:'] + [f'  {n}' for n in notes]
  return '\n'.join(lines)


# Names of calibration.assess's candidates as the tables print them.
_PROB_NAMES = {'dcg': 'DCG alone', 'mean': 'diffusion, mean softmax(y_0) (official)',
               'temperature': 'diffusion, temperature-scaled', 'vote': 'diffusion, vote distribution'}
_UNC_NAMES = {
    'entropy_calibrated': 'diffusion: entropy of the temperature-scaled probability',
    'entropy_mean': 'diffusion: entropy of mean softmax(y_0) (official)',
    'one_minus_max_calibrated': 'diffusion: 1 - max temperature-scaled probability',
    'one_minus_vote_agreement': 'diffusion: 1 - vote agreement',
    'interval_width': "diffusion: 95% interval width of the class's y_0 (CARD)",
    'ttest_p': 'diffusion: paired t-test p, top two classes (CARD)',
    'dcg_one_minus_max': 'DCG: 1 - max probability', 'dcg_entropy': 'DCG: entropy'}


def _calibration_lines(cal: dict) -> list:
  """The probabilities' calibration and the uncertainties' ranking of errors, as two tables."""
  chosen = cal['chosen']
  lines = [f"probabilities (temperature T = {cal['temperature']:.4f}, fitted on validation; "
           f"reported: {chosen['probabilities']})"]
  rows = [[_PROB_NAMES.get(k, k)] + [_num(v[m]) for m in ('accuracy', 'ece', 'nll', 'brier',
                                                           'auc_ovr_macro')]
          for k, v in cal['probabilities'].items()]
  lines += _grid(('probabilities', 'accuracy', 'ECE', 'NLL', 'Brier', 'AUC'), rows)
  lines += ['', f"uncertainty (reported: {chosen['uncertainty']}); AURC: lower is better; "
                'accuracy on the most / least certain half; range of the values']
  rows = [[_UNC_NAMES.get(k, k), _num(v['aurc']), _num(v['accuracy_certain_half']),
           _num(v['accuracy_uncertain_half']),
           f"{_num(v['spread']['min'], '.3f')} / {_num(v['spread']['median'], '.3f')} / "
           f"{_num(v['spread']['max'], '.3f')}"] for k, v in cal['uncertainty'].items()]
  return lines + _grid(('uncertainty', 'AURC', 'certain half', 'uncertain half',
                        'min / median / max'), rows)


def _plot_selective(results: dict, path: str) -> None:
  """Accuracy against coverage, most certain first, for the chosen uncertainty and the DCG's."""
  cal = results['calibration']
  fig, ax = plt.subplots(figsize=(5, 4))
  for key, style in ((cal['chosen']['uncertainty'], '-'), ('dcg_one_minus_max', '--')):
    curve = cal['selective'][key]
    ax.plot(curve['coverage'], curve['accuracy'], style,
            label=f"{_UNC_NAMES.get(key, key)}, AURC {cal['uncertainty'][key]['aurc']:.3f}")
  ax.set(xlabel='coverage (most certain images kept)', ylabel='accuracy', xlim=(0, 1),
         title=f"selective classification, {results.get('split', '')} "
               f"(n = {results['diffusion']['n']})")
  ax.legend(loc='lower left', fontsize=7)
  fig.tight_layout()
  _savefig(fig, path)


def _jsonable(x):
  """numpy values to Python, non-finite floats to None, so the file is strict JSON."""
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple, np.ndarray)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.generic):
    x = x.item()
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def _png(fig) -> bytes:
  """The figure as PNG bytes; closes it."""
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=100)
  plt.close(fig)
  return buf.getvalue()


def _savefig(fig, path) -> None:
  """Renders the figure to PNG bytes and writes them to `path` (local or a URL); closes it."""
  epath.Path(path).write_bytes(_png(fig))


def _ticks(ax, k: int, class_names) -> None:
  names = [str(c) for c in (class_names or range(k))]
  ax.set_xticks(range(k), names, rotation=45 if k > 5 else 0, fontsize=8)
  ax.set_yticks(range(k), names, fontsize=8)


def _plot_confusion(cm, path: str | None, title: str, class_names=None) -> bytes | None:
  """Counts and row-normalised panels, written to `path`, or returned as PNG bytes if None."""
  cm = np.asarray(cm)
  norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
  k = len(cm)
  fig, axes = plt.subplots(1, 2, figsize=(4 + 1.2 * k, 2.5 + 0.6 * k))
  for ax, data, name in ((axes[0], cm, 'counts'), (axes[1], norm, 'row-normalised')):
    ax.imshow(norm, cmap='Blues', vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(data):
      ax.text(j, i, f'{v:d}' if name == 'counts' else f'{v:.2f}', ha='center', va='center',
              color='white' if norm[i, j] > 0.5 else 'black', fontsize=8)
    ax.set(xlabel='predicted', ylabel='true', title=f'{title}\n({name})')
    _ticks(ax, k, class_names)
  fig.tight_layout()
  if path is None:
    return _png(fig)
  _savefig(fig, path)


def confusion_png(cm, title: str, class_names=None) -> bytes:
  """The confusion-matrix plot of the reports as PNG bytes (for TensorBoard)."""
  return _plot_confusion(cm, None, title, class_names)


def _plot_reliability(results: dict, path: str) -> None:
  fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6.5), height_ratios=(3, 1), sharex=True)
  ax.plot([0, 1], [0, 1], 'k--', lw=1, label='perfect calibration')
  series = [(results[who], style, label) for who, style, label in
            (('dcg', 's-', 'DCG alone'), ('diffusion', 'o-', 'diffusion (mean)'))]
  if results.get('calibration'):
    series.append((results['calibration']['probabilities']['temperature'], '^-',
                   'diffusion (temperature-scaled)'))
  for res, style, label in series:
    rel = res['reliability']
    pts = [(c, a) for c, a in zip(rel['confidence'], rel['accuracy']) if c is not None]
    if pts:
      ax.plot(*zip(*pts), style, ms=4, label=f"{label}, ECE {res['ece']:.3f}")
    edges = np.asarray(rel['edges'])
    hist.stairs(rel['count'], edges, label=label)
  ax.set(ylabel='accuracy', xlim=(0, 1), ylim=(0, 1),
         title=f"reliability, {results.get('split', '')} (n = {results['diffusion']['n']})")
  ax.legend(loc='upper left', fontsize=8)
  hist.set(xlabel='confidence (max probability)', ylabel='images')
  fig.tight_layout()
  _savefig(fig, path)


def write_report(results: dict, out_dir: str, name: str) -> dict:
  """Writes the whole report for one split.

  Args:
    results: as for format_table.
    out_dir: folder (local or a URL such as gs://...), created if absent.
    name: file stem, usually the split.

  Returns:
    {'json', 'txt', 'confusion', 'reliability'}: the paths of <name>.json, <name>.txt,
    <name>_confusion.png (diffusion prediction) and <name>_reliability.png (diffusion and DCG);
    with results['calibration'], also 'selective': <name>_selective.png.
  """
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = {k: str(out / f'{name}{suffix}') for k, suffix in
           (('json', '.json'), ('txt', '.txt'), ('confusion', '_confusion.png'),
            ('reliability', '_reliability.png'))}
  epath.Path(paths['json']).write_text(json.dumps(_jsonable(results), indent=2, allow_nan=False))
  epath.Path(paths['txt']).write_text(format_table(results) + '\n')
  _plot_confusion(results['diffusion']['confusion_matrix'], paths['confusion'],
                  f"diffusion (mean prob), {results.get('split', '')}", results.get('class_names'))
  _plot_reliability(results, paths['reliability'])
  if results.get('calibration'):
    paths['selective'] = str(out / f'{name}_selective.png')
    _plot_selective(results, paths['selective'])
  return paths


def write_predictions_csv(path: str, ids, labels, mean_prob, vote, uncertainty, dcg_prob,
                          class_names=None, vote_agreement=None, extra=None) -> str:
  """One row per image: id, label, pred, p_0..p_{K-1}, uncertainty, [vote_agreement], [extra],
  DCG's view.

  Args:
    path: the CSV file (local or a URL); its folder must exist.
    ids: (N,) image ids or dataset indices.
    labels: (N,) true classes, or None (written as empty cells).
    mean_prob, dcg_prob: (N, K) the diffusion's reported probabilities and the DCG's.
    vote: (N,) the diffusion's prediction (majority vote).
    uncertainty: (N,) the diffusion's reported uncertainty (docs/evaluate.md).
    class_names: K names; adds label_name and pred_name columns.
    vote_agreement: (N,) fraction of samples agreeing with the vote; a column when given.
    extra: {column: (N,) numbers}, columns written after vote_agreement in this order.

  Returns:
    path.
  """
  mean_prob, dcg_prob = np.asarray(mean_prob), np.asarray(dcg_prob)
  n, k = mean_prob.shape
  extra = {k: np.asarray(v) for k, v in (extra or {}).items()}
  for what, v in (('ids', ids), ('labels', labels), ('vote', vote), ('uncertainty', uncertainty),
                  ('dcg_prob', dcg_prob), ('vote_agreement', vote_agreement), *extra.items()):
    if v is not None and len(v) != n:
      raise ValueError(f'{what} has {len(v)} rows, mean_prob has {n}')
  names = ['label_name', 'pred_name'] if class_names is not None else []
  header = (['id', 'label', 'pred'] + names + [f'p_{c}' for c in range(k)] + ['uncertainty']
            + (['vote_agreement'] if vote_agreement is not None else []) + list(extra)
            + ['dcg_pred'] + [f'dcg_p_{c}' for c in range(k)])
  f = io.StringIO(newline='')
  w = csv.writer(f)
  w.writerow(header)
  for i in range(n):
    label = '' if labels is None else int(labels[i])
    row = [_jsonable(ids[i]), label, int(vote[i])]
    if class_names is not None:
      row += ['' if labels is None else class_names[label], class_names[int(vote[i])]]
    row += [f'{p:.6f}' for p in mean_prob[i]] + [f'{float(uncertainty[i]):.6f}']
    if vote_agreement is not None:
      row.append(f'{float(vote_agreement[i]):.6f}')
    row += [f'{float(v[i]):.6f}' for v in extra.values()]
    row += [int(np.argmax(dcg_prob[i]))] + [f'{p:.6f}' for p in dcg_prob[i]]
    w.writerow(row)
  epath.Path(path).write_bytes(f.getvalue().encode())  # Bytes: the csv module's \r\n kept as is.
  return path


def _as_display_image(image) -> np.ndarray:
  """uint8 as is; a float image (e.g. normalised) min-max scaled to [0, 1]."""
  image = np.asarray(image)
  if image.dtype == np.uint8:
    return image
  image = image.astype(np.float32)
  lo, hi = float(image.min()), float(image.max())
  return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)


def unit_range(saliency) -> np.ndarray:
  """A saliency map min-max scaled to [0, 1] for display (NaN as 0; a flat map as 0)."""
  sal = np.nan_to_num(np.asarray(saliency, np.float32))
  return (sal - sal.min()) / max(float(np.ptp(sal)), 1e-12)


def save_saliency_overlay(path: str, image, saliency, boxes, attention=None, title: str = '',
                          cls: int | None = None) -> str:
  """Two panels: the image with the ROI boxes and their attention weights; the saliency over it.

  Args:
    path: the PNG file (local or a URL).
    image: (H, W, 3) uint8 (or float, min-max scaled for display).
    saliency: (h, w) map or (h, w, K) maps; of (h, w, K), class `cls` if given, else the sum.
      Upsampled bilinearly to the image and min-max scaled.
    boxes: (k, 4) ROI boxes in image pixels, (top, left, bottom, right).
    attention: (k,) attention weight of each box, or None; the largest box is drawn thicker.
    title: figure title, e.g. label and prediction.
    cls: which class's map to show when saliency has K channels.

  Returns:
    path.
  """
  image = _as_display_image(image)
  sal = np.asarray(saliency, np.float32)
  if sal.ndim == 3:
    sal = sal[..., cls] if cls is not None else sal.sum(-1)
  sal = unit_range(sal)
  h, w = image.shape[:2]
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  top_box = None if attention is None or not len(boxes) else int(np.argmax(attention))
  fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
  for ax in axes:
    ax.imshow(image, extent=(0, w, h, 0))
    ax.axis('off')
  axes[0].set_title('ROI boxes (attention)', fontsize=9)
  for i, (t, l, b, r) in enumerate(boxes):
    axes[0].add_patch(plt.Rectangle((l, t), r - l, b - t, fill=False, color='yellow',
                                    lw=2.5 if i == top_box else 1.2))
    if attention is not None:
      axes[0].text(l + 2, t + 2, f'{float(attention[i]):.2f}', color='black', fontsize=7,
                   va='top', bbox={'facecolor': 'yellow', 'alpha': 0.7, 'pad': 1, 'lw': 0})
  overlay = axes[1].imshow(sal, cmap='jet', alpha=0.45, extent=(0, w, h, 0),
                           interpolation='bilinear', vmin=0, vmax=1)
  axes[1].set(xlim=(0, w), ylim=(h, 0))
  axes[1].set_title('saliency' + (f' (class {cls})' if cls is not None else ''), fontsize=9)
  fig.colorbar(overlay, ax=axes[1], fraction=0.046, pad=0.02)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  _savefig(fig, path)
  return path
