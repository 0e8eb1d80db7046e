"""`index.html`: a prediction or evaluation a person can browse, as one static page.

The page needs no server and no network: its CSS, script and per-image data are inline, and its
images are files beside it (`page/input/<image>.{png,jpg}`, `page/saliency/<image>.{png,jpg}`,
the evaluation's plots), so the folder can be copied, zipped or opened from a file browser. Each row shows what the model saw (the decoded
input with the DCG's ROI boxes), the saliency of the predicted class over it, the diffusion's and
the DCG's predictions and probabilities, the uncertainty and, where known, the true label. The
script sorts (by uncertainty by default, most uncertain first) and filters (predicted class, true
class, DCG-diffusion disagreements, errors); the evaluation page adds the confusion matrix and the
reliability diagram.
"""

import html
import io
import json

import matplotlib

matplotlib.use('Agg')
from matplotlib import colormaps  # noqa: E402
import numpy as np  # noqa: E402
from etils import epath  # noqa: E402
from PIL import Image  # noqa: E402

from diffmic_jax import report  # noqa: E402
from diffmic_jax.data.preprocess import decode  # noqa: E402

ASSETS = 'page'
_SALIENCY_ALPHA = 0.45


def _png_or_jpeg(image: np.ndarray) -> tuple[bytes, str]:
  """Small images as PNG (lossless, tiny anyway), photographs as JPEG."""
  out = io.BytesIO()
  if image.shape[0] <= 64:
    Image.fromarray(image).save(out, 'PNG')
    return out.getvalue(), 'png'
  Image.fromarray(image).save(out, 'JPEG', quality=90)
  return out.getvalue(), 'jpg'


def saliency_overlay(image: np.ndarray, saliency: np.ndarray) -> np.ndarray:
  """The (h, w) saliency map, min-max scaled, upsampled and blended over the uint8 image in jet."""
  sal = report.unit_range(saliency)
  h, w = image.shape[:2]
  up = np.asarray(Image.fromarray(sal).resize((w, h), Image.BILINEAR), np.float32)
  heat = colormaps['jet'](np.clip(up, 0, 1))[..., :3] * 255
  return (image * (1 - _SALIENCY_ALPHA) + heat * _SALIENCY_ALPHA).round().astype(np.uint8)


def _asset_names(ids) -> list[str]:
  from diffmic_jax.evaluate import overlay_names  # One naming rule for every per-image file.
  return [name[:-len('.png')] for name in overlay_names(ids)]


def _rows(out: epath.Path, pred, records, image_size: int) -> list[dict]:
  """Writes each image and its overlay under `out/page`; returns the page's per-image data."""
  for sub in ('input', 'saliency'):
    (out / ASSETS / sub).mkdir(parents=True, exist_ok=True)
  ids = pred.ids or [str(int(i)) for i in pred.index]
  rows = []
  for i, name in enumerate(_asset_names(ids)):
    image = decode(records[int(pred.index[i])]['image'], image_size)
    data, suffix = _png_or_jpeg(image)
    row = {'id': str(ids[i]), 'image': f'{ASSETS}/input/{name}.{suffix}',
           'pred': int(pred.pred[i]), 'probs': [round(float(p), 4) for p in pred.probs[i]],
           'dcg_pred': int(pred.dcg_pred[i]),
           'dcg_probs': [round(float(p), 4) for p in pred.dcg_probs[i]],
           'uncertainty': round(float(pred.uncertainty[i]), 4),
           'label': None if pred.labels is None else int(pred.labels[i])}
    (out / row['image']).write_bytes(data)
    if pred.saliency is not None:
      overlay = saliency_overlay(image, pred.saliency[i][..., int(pred.pred[i])])
      data, suffix = _png_or_jpeg(overlay)
      row['saliency'] = f'{ASSETS}/saliency/{name}.{suffix}'
      (out / row['saliency']).write_bytes(data)
      # Boxes as fractions of the side, so the page draws them at any thumbnail size.
      row['boxes'] = [[round(float(v) / image_size, 4) for v in box] for box in pred.roi_boxes[i]]
      row['attention'] = [round(float(a), 3) for a in pred.attention[i]]
    rows.append(row)
  return rows


def _confusion_table(cm, names) -> str:
  cm = np.asarray(cm)
  head = ''.join(f'<th>{html.escape(n)}</th>' for n in names)
  body = ''.join(
      f'<tr><th>{html.escape(names[t])}</th>' + ''.join(
          f'<td class="{"diag" if t == p else ""}">{int(v)}</td>' for p, v in enumerate(r))
      + '</tr>' for t, r in enumerate(cm))
  return (f'<table class="cm"><caption>confusion matrix of the diffusion (rows: true, columns: '
          f'predicted)</caption><tr><th></th>{head}</tr>{body}</table>')


def _summary(results: dict | None, figures: dict | None, names) -> str:
  if results is None:
    return ''
  parts = ['<section id="summary"><h2>Evaluation</h2>',
           f'<p>{html.escape(results.get("protocol", ""))}</p><table class="metrics">'
           '<tr><th></th><th>DCG alone</th><th>diffusion (mean)</th></tr>']
  for key in ('accuracy', 'macro_f1', 'kappa_quadratic', 'ece'):
    a, b = results['dcg'].get(key), results['diffusion'].get(key)
    fmt = lambda v: 'n/a' if v is None else f'{v:.4f}'
    parts.append(f'<tr><th>{key.replace("_", " ")}</th><td>{fmt(a)}</td><td>{fmt(b)}</td></tr>')
  parts.append('</table>')
  parts.append(_confusion_table(results['diffusion']['confusion_matrix'], names))
  for key, alt in (('confusion', 'confusion matrix'), ('reliability', 'reliability diagram')):
    if figures and key in figures:
      parts.append(f'<img class="figure" id="{key}" src="{html.escape(figures[key])}" '
                   f'alt="{alt}">')
  parts.append('</section>')
  return ''.join(parts)


def write_page(out, pred, records, image_size: int, *, title: str, results: dict | None = None,
               figures: dict | None = None, class_names=None) -> epath.Path:
  """Writes `out/index.html` and its images under `out/page/{input,saliency}/`.

  Args:
    out: The prediction's or evaluation's folder (local or a URL).
    pred: An `inference.Prediction` with ids, index and (for overlays) saliency.
    records: Random access to the stored records its `index` points at (`{'image': bytes}`).
    image_size: The model's input side; the page shows the images at that size.
    title: The page's heading.
    results: An evaluation's whole-split results: adds metrics, the confusion matrix and plots.
    figures: {'confusion', 'reliability'}: plot files relative to `out`.
    class_names: K names; default the class indices.

  Returns:
    The page's path.
  """
  out = epath.Path(out)
  k = pred.probs.shape[1]
  names = [str(c) for c in (class_names or range(k))]
  data = {'classes': names, 'labelled': pred.labels is not None,
          'rows': _rows(out, pred, records, image_size)}
  # '<' escaped: no string in the data can close the script element.
  blob = json.dumps(data, separators=(',', ':')).replace('<', '\\u003c')
  page = (_TEMPLATE.replace('{{TITLE}}', html.escape(title))
          .replace('{{SUMMARY}}', _summary(results, figures, names))
          .replace('{{DATA}}', blob))
  path = out / 'index.html'
  path.write_text(page)
  return path


_TEMPLATE = '''<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>{{TITLE}}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 1.3em; }
#controls { position: sticky; top: 0; background: #fff; padding: .5em 0; border-bottom: 1px solid #ccc; z-index: 2; }
#controls label { margin-right: 1.2em; }
table.rows { border-collapse: collapse; margin-top: .5em; }
table.rows td, table.rows th { border-bottom: 1px solid #eee; padding: 4px 8px; vertical-align: middle; text-align: left; }
.thumb { position: relative; display: inline-block; width: 128px; height: 128px; }
.thumb img { width: 128px; height: 128px; image-rendering: pixelated; display: block; }
.box { position: absolute; border: 1px solid yellow; box-sizing: border-box; }
.box.top { border-width: 2px; }
.bars { display: grid; grid-template-columns: auto 80px auto; gap: 0 6px; font-size: 12px; }
.bar { background: #4a7bd0; height: 10px; align-self: center; }
.bar.dcg { background: #d08a4a; }
tr.error { background: #fde8e8; }
.tag { display: inline-block; padding: 0 6px; border-radius: 3px; font-size: 12px; margin: 1px; }
.tag.error { background: #c0392b; color: #fff; }
.tag.disagree { background: #e67e22; color: #fff; }
table.cm td, table.cm th, table.metrics td, table.metrics th { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
table.cm td.diag { background: #dfeedd; font-weight: bold; }
table.cm, table.metrics { border-collapse: collapse; margin: .5em 2em .5em 0; display: inline-table; vertical-align: top; }
img.figure { max-width: 48%; vertical-align: top; }
</style>
</head>
<body>
<h1>{{TITLE}}</h1>
{{SUMMARY}}
<div id="controls">
<label>sort <select id="sort">
<option value="uncertainty-desc">uncertainty, highest first</option>
<option value="uncertainty-asc">uncertainty, lowest first</option>
<option value="input">input order</option>
</select></label>
<label>predicted <select id="pred-filter"><option value="">any</option></select></label>
<label id="label-filter-wrap">true class <select id="label-filter"><option value="">any</option></select></label>
<label><input type="checkbox" id="only-disagree"> DCG and diffusion disagree</label>
<label id="only-errors-wrap"><input type="checkbox" id="only-errors"> errors only</label>
<span id="count"></span>
</div>
<table class="rows">
<thead><tr><th>#</th><th>image, ROI boxes</th><th>saliency (predicted class)</th><th>id</th>
<th>true</th><th>diffusion</th><th>DCG</th><th>uncertainty</th><th>marks</th></tr></thead>
<tbody id="rows"></tbody>
</table>
<script type="application/json" id="data">{{DATA}}</script>
<script>
'use strict';
const DATA = JSON.parse(document.getElementById('data').textContent);
const $ = (id) => document.getElementById(id);
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}
function thumb(src, boxes, attention) {
  const div = el('div', {class: 'thumb'}, el('img', {src: src, alt: ''}));
  if (boxes) {
    const top = attention.indexOf(Math.max(...attention));
    boxes.forEach(([t, l, b, r], j) => {
      const box = el('div', {class: j === top ? 'box top' : 'box',
                             title: 'attention ' + attention[j]});
      box.style.cssText = `top:${t * 100}%;left:${l * 100}%;height:${(b - t) * 100}%;width:${(r - l) * 100}%`;
      div.append(box);
    });
  }
  return div;
}
function bars(probs, pred, dcg) {
  const g = el('div', {class: 'bars'});
  probs.forEach((p, c) => {
    const bar = el('div', {class: dcg ? 'bar dcg' : 'bar'});
    bar.style.width = (p * 80).toFixed(1) + 'px';
    g.append(el('span', {}, (c === pred ? '\\u25b6 ' : '') + DATA.classes[c]),
             el('span', {}, bar), el('span', {}, p.toFixed(3)));
  });
  return g;
}
for (const sel of ['pred-filter', 'label-filter']) {
  DATA.classes.forEach((name, c) => $(sel).append(el('option', {value: String(c)}, name)));
}
if (!DATA.labelled) { $('label-filter-wrap').hidden = true; $('only-errors-wrap').hidden = true; }
DATA.rows.forEach((r, i) => { r.order = i; r.error = r.label !== null && r.label !== r.pred;
                              r.disagree = r.pred !== r.dcg_pred; });
function render() {
  const sort = $('sort').value, pf = $('pred-filter').value, lf = $('label-filter').value;
  let rows = DATA.rows.filter((r) =>
      (pf === '' || r.pred === Number(pf)) && (lf === '' || r.label === Number(lf)) &&
      (!$('only-disagree').checked || r.disagree) && (!$('only-errors').checked || r.error));
  const by = {'uncertainty-desc': (a, b) => b.uncertainty - a.uncertainty || a.order - b.order,
              'uncertainty-asc': (a, b) => a.uncertainty - b.uncertainty || a.order - b.order,
              'input': (a, b) => a.order - b.order}[sort];
  rows = rows.slice().sort(by);
  const body = $('rows');
  body.replaceChildren(...rows.map((r) => {
    const marks = el('td', {});
    if (r.error) marks.append(el('span', {class: 'tag error'}, 'error'));
    if (r.disagree) marks.append(el('span', {class: 'tag disagree'}, 'DCG disagrees'));
    const tr = el('tr', {class: r.error ? 'row error' : 'row', 'data-id': r.id,
                         'data-uncertainty': String(r.uncertainty)},
      el('td', {}, String(r.order + 1)),
      el('td', {}, thumb(r.image, r.boxes, r.attention)),
      el('td', {}, r.saliency ? thumb(r.saliency, null, null) : ''),
      el('td', {}, r.id),
      el('td', {}, r.label === null ? '' : DATA.classes[r.label]),
      el('td', {}, bars(r.probs, r.pred, false)),
      el('td', {}, bars(r.dcg_probs, r.dcg_pred, true)),
      el('td', {}, r.uncertainty.toFixed(3)),
      marks);
    return tr;
  }));
  $('count').textContent = `${rows.length} of ${DATA.rows.length} images`;
}
for (const id of ['sort', 'pred-filter', 'label-filter', 'only-disagree', 'only-errors']) {
  $(id).addEventListener('change', render);
}
render();
</script>
</body>
</html>
'''
