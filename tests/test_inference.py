"""The Python API, the exported model and the browsable page, on conftest's trained `demo_run`.

The classifier is restored and compiled once for the module; commands run as subprocesses, as a
user runs them; the exported model is loaded by an interpreter that cannot import this package;
the page is opened in a real headless chromium.
"""

import csv
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_main
from diffmic_jax import export, metrics

DEMO_NPZ = REPO / 'diffmic_jax' / 'data' / 'demo' / 'retinamnist.npz'


def test_exported_read_out_is_the_host_read_out():
  """The vote (ties to the larger mean), agreement and normalised entropy computed inside the
  exported module equal metrics.summarize_samples."""
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 64, 5)) * 2
  logits[:2, :8] = logits[0, :8]  # Ties between two votes each way.
  logits[2:, :8] = logits[2, :8] + np.eye(5)[rng.integers(0, 5, 8)] * 3
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  got = export.summarize(probs.astype(np.float32))
  want = metrics.summarize_samples(probs)
  np.testing.assert_array_equal(np.asarray(got['pred']), want['vote'])
  np.testing.assert_allclose(np.asarray(got['probs']), want['mean_prob'], atol=1e-6)
  np.testing.assert_allclose(np.asarray(got['vote_agreement']), want['vote_agreement'])
  np.testing.assert_allclose(np.asarray(got['uncertainty']), want['uncertainty'], atol=1e-5)


# ---- slow: on the trained run ----

@pytest.fixture(scope='module')
def workdir(demo_run) -> pathlib.Path:
  """The demo run without its fitted temperature: the tiny model's T flattens every uncertainty to
  1, and the page's sorting needs uncertainties that differ."""
  copy = demo_run['base'] / 'inference_run'
  shutil.copytree(demo_run['workdir'], copy, ignore=shutil.ignore_patterns('calibration'))
  return copy


@pytest.fixture(scope='module')
def clf(workdir):
  from diffmic_jax import Classifier
  return Classifier.from_workdir(str(workdir), checkpoint='best')


@pytest.fixture(scope='module')
def photos(demo_run, data_root) -> pathlib.Path:
  """Real inputs of several kinds: APTOS photos (JPEG, 224 px and another size), a non-square
  PNG and RetinaMNIST test images with their labels, listed by a CSV."""
  folder = demo_run['base'] / 'inference_photos'
  folder.mkdir()
  aptos = sorted((data_root / 'aptos2019_224' / 'images').iterdir())[:3]
  for p in aptos[:2]:
    shutil.copy(p, folder / p.name)
  Image.open(aptos[2]).resize((300, 200)).save(folder / 'wide.png')
  test = np.load(DEMO_NPZ)
  lines = ['file,label'] + [f'{p.name},0' for p in aptos[:2]] + ['wide.png,1']
  for i in range(9):
    Image.fromarray(test['test_images'][i]).save(folder / f'retina_{i}.png')
    lines.append(f'retina_{i}.png,{int(test["test_labels"][i, 0])}')
  (folder / 'listed.csv').write_text('\n'.join(lines) + '\n')
  return folder


def _csv(path) -> list[dict]:
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope='module')
def predicted(demo_run, workdir, photos) -> dict:
  """`--mode=predict --input=listed.csv`: its folder and rows."""
  out = demo_run['base'] / 'inference_predict'
  r = run_main('--mode=predict', f'--workdir={workdir}',
               f'--input={photos / "listed.csv"}', f'--output_dir={out}')
  assert r.returncode == 0, r.stderr[-4000:]
  folder = out / 'predict' / f'step_{demo_run["best_step"]}' / 'listed'
  return {'dir': folder, 'rows': _csv(folder / 'predictions.csv')}


@pytest.mark.slow
def test_classifier_gives_the_numbers_of_the_predict_command(clf, photos, predicted):
  """Classifier.predict on the same files equals the CSV of --mode=predict (its rows are written
  with 6 decimals); arrays and PIL images are read as their files; one compile serves batches of
  any length."""
  rows = predicted['rows']
  paths = [str(photos / row['id']) for row in rows]
  out = clf.predict(paths)
  assert len(out) == len(rows) == 12 and out.ids == paths
  for i, row in enumerate(rows):
    assert out.pred[i] == int(row['pred'])
    np.testing.assert_allclose(out.probs[i], [float(row[f'p_{k}']) for k in range(5)], atol=2e-6)
    np.testing.assert_allclose(out.dcg_probs[i], [float(row[f'dcg_p_{k}']) for k in range(5)],
                               atol=2e-6)
    assert out.uncertainty[i] == pytest.approx(float(row['uncertainty']), abs=2e-6)
  assert out.saliency.shape[:1] == out.roi_boxes.shape[:1] == (12,)
  assert out.saliency.shape[-1] == 5 and out.roi_boxes.shape[-1] == 4

  # The same PNGs as arrays and as PIL images, at the same batch positions: the same numbers.
  as_pixels = [np.asarray(Image.open(p).convert('RGB')) if i % 2 else Image.open(p)
               for i, p in enumerate(paths[:4])]
  again = clf.predict(paths[:2] + as_pixels[2:])
  np.testing.assert_allclose(again.probs, out.probs[:4], atol=1e-6)
  np.testing.assert_allclose(again.saliency, out.saliency[:4], atol=1e-6)
  assert clf._predict_fn._cache_size() == 1  # 12 and 4 images: one padded batch shape.


def _readme_block(after: str, fence: str = 'python') -> str:
  """The first ```<fence> block of the README after the line `after`."""
  text = (REPO / 'README.md').read_text()
  m = re.compile(rf'^```{fence}\n(.*?)^```', re.S | re.M).search(text, text.index(after))
  return m.group(1)


EXPORT_SECTION = '### A model that ships without this code'
JAX_ONLY = {'PATH': os.environ['PATH'], 'JAX_PLATFORMS': 'cpu'}  # No PYTHONPATH.


def _jax_only(code: str, cwd) -> subprocess.CompletedProcess:
  """`code` in an isolated interpreter (-I -S) that finds jax and numpy but not this package: the
  venv's packages are appended to sys.path without their .pth files (an editable install)."""
  code = (f'import sys\nsys.path.append({sysconfig.get_paths()["purelib"]!r})\n'
          "import importlib.util\nassert importlib.util.find_spec('diffmic_jax') is None\n" + code)
  return subprocess.run([sys.executable, '-I', '-S', '-c', code], cwd=cwd, capture_output=True,
                        text=True, timeout=300, env=JAX_ONLY)


@pytest.fixture(scope='module')
def exported(demo_run, workdir) -> pathlib.Path:
  """The README's `--mode=export` command on the demo run, into a folder of its own."""
  args = _readme_block(EXPORT_SECTION, fence='').split()[3:]  # After `python -m diffmic_jax.main`.
  out = demo_run['base'] / 'inference_export'
  r = run_main(*[a.replace('/tmp/diffmic_demo', str(workdir)) for a in args],
               f'--output_dir={out}')
  assert r.returncode == 0, r.stderr[-4000:]
  return out / 'export' / f'step_{demo_run["best_step"]}' / 'model'


@pytest.mark.slow
def test_exported_model_runs_without_the_package(clf, exported, photos, tmp_path):
  """What --mode=export wrote, loaded by an interpreter that finds jax but not diffmic_jax, gives
  Classifier.predict's numbers on the same preprocessed images."""
  folder = exported
  meta = json.loads((folder / 'model.json').read_text())
  assert meta['input']['image_size'] == clf.image_size and meta['classes'] == list('01234')
  assert meta['sampler']['num_samples'] == clf.spec.num_samples and meta['seed'] == 1234
  assert meta['normalisation']['mean'] == [0.485, 0.456, 0.406]

  paths = [str(p) for p in sorted(photos.glob('*.*g'))][:5]
  images = clf.preprocess(paths)
  batch = np.zeros((clf.batch_size,) + images.shape[1:], np.uint8)
  batch[:len(images)] = images  # Padded as Classifier.predict pads its first batch.
  np.save(tmp_path / 'batch.npy', batch)
  child = _jax_only(f'''
import json
import jax, numpy as np
meta = json.load(open({str(folder / 'model.json')!r}))
model = jax.export.deserialize(open({str(folder / 'model.jax')!r}, 'rb').read())
out = model.call(np.load('batch.npy'), np.uint32(meta['seed']), np.uint32(0))
np.savez('out.npz', **{{k: np.asarray(v) for k, v in out.items()}})
print(sorted(sys.modules.keys() & {{'diffmic_jax', 'flax', 'optax'}}))
''', tmp_path)
  assert child.returncode == 0, child.stderr[-4000:]
  assert child.stdout.strip() == '[]'
  got = np.load(tmp_path / 'out.npz')
  want = clf.predict(paths)
  n = len(paths)
  np.testing.assert_array_equal(got['pred'][:n], want.pred)
  np.testing.assert_array_equal(got['roi_boxes'][:n], want.roi_boxes)
  for key, ref in (('probs', want.probs), ('uncertainty', want.uncertainty),
                   ('dcg_probs', want.dcg_probs), ('saliency', want.saliency)):
    np.testing.assert_allclose(got[key][:n], ref, atol=1e-5, err_msg=key)


@pytest.mark.slow
def test_readme_examples_run(workdir, exported, photos, tmp_path):
  """The README's API example and its load example (the export command ran in `exported`), with
  the demo run's paths."""
  for name, src in (('fundus_1.jpg', next(photos.glob('*.jpg'))), ('fundus_2.png',
                                                                  photos / 'wide.png')):
    shutil.copy(src, tmp_path / name)
  api = _readme_block('### From Python').replace('/tmp/diffmic_demo', str(workdir))
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(REPO)}
  r = subprocess.run([sys.executable, '-c', api], cwd=tmp_path, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-4000:]
  assert r.stdout.count('fundus_') == 2, r.stdout

  load = re.sub(r"folder = '[^']*'", f'folder = {str(exported)!r}', _readme_block(EXPORT_SECTION))
  r = _jax_only(load, tmp_path)
  assert r.returncode == 0, r.stderr[-4000:]
  assert "'probs'" in r.stdout, r.stdout


# ---- the page, in a real browser ----

@pytest.fixture(scope='module')
def browser():
  """Headless chromium through chromedriver (Debian's `chromium`, `chromium-driver`)."""
  webdriver = pytest.importorskip('selenium.webdriver')
  from selenium.webdriver.chrome.service import Service
  binary = shutil.which('chromium') or shutil.which('chromium-browser')
  driver_path = shutil.which('chromedriver')
  if not binary or not driver_path:
    pytest.skip('chromium and chromedriver not found: apt-get install chromium chromium-driver')
  options = webdriver.ChromeOptions()
  options.binary_location = binary
  profile = tempfile.mkdtemp(prefix='diffmic_chromium_')
  for arg in ('--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
              '--disable-component-update', '--disable-sync', '--no-first-run',
              f'--user-data-dir={profile}', '--window-size=1400,1000'):
    options.add_argument(arg)
  options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
  driver = webdriver.Chrome(options=options, service=Service(driver_path))
  try:
    yield driver
  finally:
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _open(browser, page: pathlib.Path):
  browser.get(page.as_uri())
  browser.get_log('browser')  # Drops anything from an earlier page.
  browser.refresh()
  return browser


def _shown(browser) -> list[dict]:
  return browser.execute_script(
      "return [...document.querySelectorAll('tr.row')].map(r => ({id: r.dataset.id, "
      "u: Number(r.dataset.uncertainty), error: r.classList.contains('error'), "
      "tags: r.lastChild.textContent}))")


def _select(browser, element_id: str, value: str):
  browser.execute_script(
      "const e = document.getElementById(arguments[0]); e.value = arguments[1]; "
      "e.dispatchEvent(new Event('change'))", element_id, value)


def _no_errors(browser):
  logs = [e for e in browser.get_log('browser') if e['level'] in ('SEVERE', 'WARNING')]
  assert not logs, logs
  broken = browser.execute_script(
      "return [...document.images].filter(i => !i.complete || i.naturalWidth === 0)"
      ".map(i => i.src)")
  assert not broken, broken


@pytest.mark.slow
def test_prediction_page_sorts_and_filters(browser, predicted):
  rows = predicted['rows']
  b = _open(browser, predicted['dir'] / 'index.html')
  _no_errors(b)
  shown = _shown(b)
  assert len(shown) == len(rows) == 12  # One row per CSV row, every image loaded.
  assert b.find_element('id', 'count').text == '12 of 12 images'
  by_u = [s['u'] for s in shown]
  assert by_u == sorted(by_u, reverse=True) and by_u != [float(r['uncertainty']) for r in rows]
  _select(b, 'sort', 'input')
  assert [s['id'] for s in _shown(b)] == [r['id'] for r in rows]
  _select(b, 'sort', 'uncertainty-asc')
  assert [s['u'] for s in _shown(b)] == sorted(by_u)

  errors = {r['id'] for r in rows if r['label'] != r['pred']}
  disagree = {r['id'] for r in rows if r['pred'] != r['dcg_pred']}
  assert {s['id'] for s in shown if s['error']} == errors
  assert {s['id'] for s in shown if 'DCG disagrees' in s['tags']} == disagree
  b.find_element('id', 'only-errors').click()
  assert {s['id'] for s in _shown(b)} == errors
  b.find_element('id', 'only-errors').click()
  b.find_element('id', 'only-disagree').click()
  assert {s['id'] for s in _shown(b)} == disagree
  b.find_element('id', 'only-disagree').click()
  for column, control in (('pred', 'pred-filter'), ('label', 'label-filter')):
    value = rows[0][column]
    _select(b, control, value)
    assert {s['id'] for s in _shown(b)} == {r['id'] for r in rows if r[column] == value}
    _select(b, control, '')
  assert len(_shown(b)) == 12
  _no_errors(b)


@pytest.mark.slow
def test_evaluation_page_has_the_split_confusion_and_reliability(browser, demo_run, tmp_path):
  out = tmp_path / 'evaluated'
  r = run_main('--mode=evaluate', f'--workdir={demo_run["workdir"]}', f'--output_dir={out}')
  assert r.returncode == 0, r.stderr[-4000:]
  folder = out / 'eval' / f'step_{demo_run["best_step"]}' / 'test'
  report = json.loads((folder / 'report.json').read_text())
  b = _open(browser, folder / 'index.html')
  _no_errors(b)
  assert len(_shown(b)) == report['n'] == 400
  cells = b.execute_script("return [...document.querySelectorAll('table.cm tr')].slice(1).map("
                           "r => [...r.querySelectorAll('td')].map(c => Number(c.textContent)))")
  assert cells == report['diffusion']['confusion_matrix']
  for figure in ('confusion', 'reliability'):
    assert b.execute_script(f"return document.getElementById('{figure}').naturalWidth") > 0
  assert len([s for s in _shown(b) if s['error']]) == round(
      400 * (1 - report['vote']['accuracy']))


@pytest.mark.slow
def test_validation_writes_tensorboard_images(demo_run):
  """The confusion matrix and saliency overlays of each validation sit beside its scalars."""
  from tensorboardX.proto import event_pb2
  tags = {}
  for events in (demo_run['workdir'] / 'tensorboard').iterdir():
    data = events.read_bytes()
    pos = 0
    while pos < len(data):  # TFRecord: length (8), its CRC (4), the record, its CRC (4).
      n = int.from_bytes(data[pos:pos + 8], 'little')
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
      pos += 16 + n
      for v in event.summary.value:
        kind = 'image' if v.HasField('image') else 'scalar'
        tags.setdefault(v.tag, set()).add((event.step, kind))
        if kind == 'image':
          image = Image.open(io.BytesIO(v.image.encoded_image_string))
          assert image.size[0] > 50 and image.size[1] > 50
  val_steps = {s for s, _ in tags['val/dcg_accuracy']}
  assert {s for s, _ in tags['val/confusion_matrix']} == val_steps
  assert {(s, 'image') for s in val_steps} <= tags['val/saliency/0']
  assert 'val/saliency/3' in tags and 'val/saliency/4' not in tags
