"""Evaluate and predict from a saved run, as a user runs them: the run's own config, own output
folders, new images with no dataset build, and refusals that write nothing.

One tiny run (`configs/demo.py:smoke`, conftest's `demo_run`) is trained once per test run;
every other command is a subprocess of `python -m diffmic_jax.main` against it.
"""

import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from diffmic_jax import evaluate, run_config
from diffmic_jax.data import files
from diffmic_jax.data.examples import DataError

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO_NPZ = REPO / 'diffmic_jax' / 'data' / 'demo' / 'retinamnist.npz'


# ---- fast: the pieces ----

def test_overrides_allowed_on_a_saved_config():
  run_config.check_overrides(['eval.num_samples', 'eval.splits', 'data.data_dir',
                              'data.manual_dir'])
  with pytest.raises(ValueError, match=r'--config.model.width.*eval\.\*'):
    run_config.check_overrides(['eval.num_samples', 'model.width'])
  with pytest.raises(ValueError, match='data.name'):
    run_config.check_overrides(['data.name'])


def test_saved_config_is_named_only_for_evaluate_and_predict(tmp_path):
  (tmp_path / 'config_train.json').write_text(json.dumps({'eval': {'splits': ['test']}}))
  argv = ['main', f'--workdir={tmp_path}', '--mode=evaluate', '--config.eval.num_samples=2']
  assert run_config.with_saved_config(argv) == [
      'main', f'--config={run_config.PATH}:{tmp_path}', *argv[1:]]
  assert run_config.with_saved_config(['main', '--mode', 'train', f'--workdir={tmp_path}']) == [
      'main', '--mode', 'train', f'--workdir={tmp_path}']
  given = ['main', '--config=configs/demo.py', '--mode=predict', f'--workdir={tmp_path}']
  assert run_config.with_saved_config(given) == given
  assert run_config.load(str(tmp_path)).eval.splits == ('test',)  # JSON lists back to tuples
  assert run_config.is_saved_config(f'{run_config.PATH}:{tmp_path}')
  assert not run_config.is_saved_config('configs/demo.py:smoke')
  with pytest.raises(ValueError, match='config_train.json not found'):
    run_config.with_saved_config(['main', '--mode=evaluate', f'--workdir={tmp_path / "none"}'])


def test_a_config_saved_before_newer_fields_reads_them_as_their_defaults(tmp_path):
  from configs import default
  (tmp_path / 'config_train.json').write_text(json.dumps(
      {'model': {'width': 16}, 'train': {'prior_dropout': 0.5}, 'eval': {'num_samples': 2}}))
  loaded = run_config.load(str(tmp_path))
  assert loaded.train.official_dcg_passes is False and loaded.model.eps_init == 'random'
  assert loaded.loss.prior_weight == 0.0 and loaded.eval.refit_temperature is False
  assert loaded.train.prior_dropout == 0.5 and loaded.model.width == 16  # What was saved stays.
  # The fill-ins are configs/default.py's values, so an old run reads back as trained.
  fresh = default.get_config()
  for section, fields in run_config.NEWER_FIELDS.items():
    for name, value in fields.items():
      assert fresh[section][name] == value, f'{section}.{name}'


def test_image_listing_from_folder_and_csv(tmp_path):
  (tmp_path / 'sub').mkdir()
  for name in ('b.png', 'a.jpg', 'sub/c.PNG'):
    Image.new('RGB', (30, 20)).save(tmp_path / name)
  (tmp_path / 'notes.txt').write_text('not an image')
  images = files.list_images(str(tmp_path), num_classes=5)
  assert images.ids == ['a.jpg', 'b.png', 'sub/c.PNG'] and not images.labelled
  assert images.name == tmp_path.name
  listing = tmp_path / 'list.csv'
  listing.write_text('file,label,id\na.jpg,1,first\nsub/c.PNG,4,third\n')
  images = files.list_images(str(listing), num_classes=5)
  assert images.ids == ['first', 'third'] and images.labelled and images.name == 'list'
  assert [ex.label for ex in images.examples] == [1, 4]
  listing.write_text('file,label\na.jpg,1\nmissing.jpg,0\n')
  with pytest.raises(DataError, match=r'list.csv:3: image file .*missing.jpg not found'):
    files.list_images(str(listing), num_classes=5)
  listing.write_text('file,label\na.jpg,7\n')
  with pytest.raises(DataError, match=r'list.csv:2: label 7 outside \[0, 5\)'):
    files.list_images(str(listing), num_classes=5)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(DataError, match='empty: no image files'):
    files.list_images(str(tmp_path / 'empty'), 5)
  with pytest.raises(DataError, match='no such folder or CSV file'):
    files.list_images(str(tmp_path / 'absent'), 5)


def test_file_batches_match_the_build_preprocessing(tmp_path):
  """A non-square photo is centre-cropped, resized to the stored size and decoded to the model's
  size, as a build followed by a read would do; padding rows carry mask False."""
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 255, (60, 90, 3), np.uint8)
  Image.fromarray(pixels).save(tmp_path / 'wide.png')
  images = files.list_images(str(tmp_path), 5)
  batches = list(files.make_file_iterator(images, stored_size=32, encoding='png', image_size=16,
                                          global_batch_size=4))
  assert len(batches) == 1 and batches[0]['mask'].tolist() == [True, False, False, False]
  want = Image.fromarray(pixels[:, 15:75]).resize((32, 32), Image.BICUBIC).resize(
      (16, 16), Image.BILINEAR)
  np.testing.assert_array_equal(batches[0]['image'][0], np.asarray(want))
  assert batches[0]['label'][0] == -1


def test_output_folders_are_never_reused(tmp_path):
  first = evaluate.fresh_dir(str(tmp_path), 'eval', 12, 'test[:50%]')
  assert str(first) == str(tmp_path / 'eval' / 'step_12' / 'test_50')
  first.mkdir(parents=True)
  assert evaluate.fresh_dir(str(tmp_path), 'eval', 12, 'test[:50%]').name == 'test_50_2'
  assert evaluate.overlay_names(['a/b.jpg', 'a__b.png', 'x y.JPEG', 'test/3']) == [
      'a__b.png', 'a__b_2.png', 'x_y.png', 'test__3.png']


# ---- slow: the commands, on a trained run ----

def _main(*args, timeout=900):
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
         'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(REPO)}
  return subprocess.run([sys.executable, '-m', 'diffmic_jax.main', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _snapshot(folder: pathlib.Path) -> dict:
  return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
          for p in folder.rglob('*')}


def _rows(path) -> list[dict]:
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope='module')
def run(demo_run):
  return demo_run


@pytest.mark.slow
def test_evaluate_with_the_saved_config_into_its_own_folders(run):
  workdir, out = run['workdir'], run['base'] / 'eval_out'
  before = _snapshot(workdir)
  r = _main('--mode=evaluate', f'--workdir={workdir}')
  assert r.returncode == 0, r.stderr[-4000:]
  after = _snapshot(workdir)
  # The training run's reports/test.* and everything else stay as they were.
  assert {k: v for k, v in after.items() if not k.startswith('eval')} == before
  folder = workdir / 'eval' / f'step_{run["best_step"]}' / 'test'
  got = json.loads((folder / 'report.json').read_text())
  trained = json.loads((workdir / 'reports' / 'test.json').read_text())
  assert got['n'] == 400 and got['diffusion'] == trained['diffusion'] and got['dcg'] == trained['dcg']
  for name in ('report.txt', 'report_confusion.png', 'report_reliability.png',
               'report_selective.png', 'config.json'):
    assert (folder / name).stat().st_size > 0, name
  # The temperature the training run fitted on validation is the one evaluate used, and the
  # calibrated probabilities keep the diffusion's argmax: the same accuracy.
  saved = json.loads((workdir / 'calibration' / f'step_{run["best_step"]}.json').read_text())
  assert saved['fitted_on'] == 'validation' and saved['temperature'] > 0
  cal = got['calibration']
  assert cal == trained['calibration'] and cal['temperature'] == saved['temperature']
  assert cal['probabilities']['temperature']['accuracy'] == got['diffusion']['accuracy']
  assert cal['probabilities']['dcg']['accuracy'] == got['dcg']['accuracy']
  assert len(cal['selective']['entropy_calibrated']['accuracy']) == 400
  assert 'AURC' in (folder / 'report.txt').read_text()

  # Into another folder (a read-only workdir would do) that already holds this evaluation, with
  # an evaluation override: a fresh folder beside the old one, which stays as it was.
  old = out / 'eval' / f'step_{run["best_step"]}' / 'test'
  old.mkdir(parents=True)
  (old / 'report.json').write_text('{}')
  r = _main('--mode=evaluate', f'--workdir={workdir}', f'--output_dir={out}',
            '--config.eval.num_samples=3')
  assert r.returncode == 0, r.stderr[-4000:]
  assert _snapshot(workdir) == after and (old / 'report.json').read_text() == '{}'
  again = old.parent / 'test_2'
  assert '3 sample(s)' in json.loads((again / 'report.json').read_text())['protocol']
  assert json.loads((again / 'config.json').read_text())['eval']['num_samples'] == 3
  assert 'writing to' in r.stderr and str(again) in r.stderr


@pytest.mark.slow
def test_refused_runs_write_nothing(run):
  workdir = run['workdir']
  before = _snapshot(workdir)
  r = _main('--mode=evaluate', f'--workdir={workdir}', '--config.model.feature_dim=32')
  assert r.returncode != 0 and '--config.model.feature_dim' in r.stderr
  r = _main('--mode=evaluate', f'--workdir={workdir}', '--config=configs/demo.py:smoke',
            f'--config.data.data_dir={run["data_dir"]}', '--config.model.feature_dim=32')
  assert r.returncode != 0 and 'model.feature_dim: checkpoint has 16' in r.stderr
  r = _main(f'--workdir={workdir}', '--config=configs/demo.py:smoke',  # Resume: train mode.
            f'--config.data.data_dir={run["data_dir"]}', '--config.model.feature_dim=32')
  assert r.returncode != 0 and 'model.feature_dim: checkpoint has 16' in r.stderr
  bad = run['base'] / 'bad_images'
  bad.mkdir()
  Image.new('RGB', (40, 40)).save(bad / 'fine.png')
  (bad / 'broken.jpg').write_bytes(b'\xff\xd8 not a jpeg')
  r = _main('--mode=predict', f'--workdir={workdir}', f'--input={bad}')
  assert r.returncode != 0 and 'broken.jpg' in r.stderr
  assert _snapshot(workdir) == before


@pytest.mark.slow
def test_predict_new_images_without_a_dataset(run, data_root):
  """A folder of photos (JPEG, a non-square PNG, a subfolder), no labels, no train split, no
  build: one row per image named by its file, overlays named after the images, capped."""
  new = run['base'] / 'clinic'
  (new / 'more').mkdir(parents=True)
  photos = sorted((data_root / 'aptos2019_224' / 'images').iterdir())[:4]
  for p in photos[:3]:
    (new / p.name).write_bytes(p.read_bytes())
  Image.open(photos[3]).resize((300, 200)).save(new / 'more' / 'wide.png')
  unused = run['base'] / 'no_tfds_here'
  r = _main('--mode=predict', f'--workdir={run["workdir"]}', f'--input={new}',
            '--config.eval.save_saliency=True', '--config.eval.max_saliency_images=2',
            f'--config.data.data_dir={unused}')
  assert r.returncode == 0, r.stderr[-4000:]
  assert not unused.exists()  # Nothing was built.
  folder = run['workdir'] / 'predict' / f'step_{run["best_step"]}' / 'clinic'
  rows = _rows(folder / 'predictions.csv')
  assert [row['id'] for row in rows] == sorted([p.name for p in photos[:3]]) + ['more/wide.png']
  for row in rows:
    probs = [float(row[f'p_{k}']) for k in range(5)]
    mean = [float(row[f'mean_p_{k}']) for k in range(5)]
    votes = [float(row[f'vote_p_{k}']) for k in range(5)]
    assert row['label'] == '' and abs(sum(probs) - 1) < 1e-4 and abs(sum(votes) - 1) < 1e-6
    top = sorted(probs)
    if top[-1] - top[-2] > 2e-6:  # Resolved at the CSV's 6 decimals: the temperature keeps it.
      assert np.argmax(probs) == np.argmax(mean)
    assert int(row['pred']) in range(5) and 0 <= float(row['uncertainty']) <= 1
    assert 0 <= float(row['ttest_p']) <= 1 and float(row['interval_width']) >= 0
  overlays = sorted(p.name for p in (folder / 'saliency').iterdir())
  assert overlays == [pathlib.Path(row['id']).stem + '.png' for row in rows[:2]]


@pytest.mark.slow
def test_predict_files_equals_predict_of_the_built_split(run):
  """The same images through a CSV of files and through the built split: the builder's ids
  name the split's rows, and the DCG (deterministic) gives each image the same probabilities."""
  test = np.load(DEMO_NPZ)
  folder = run['base'] / 'demo_files'
  folder.mkdir()
  lines = ['file,label,id']
  for i in range(10):
    Image.fromarray(test['test_images'][i]).save(folder / f'{i}.png')
    lines.append(f'{i}.png,{int(test["test_labels"][i, 0])},test/{i}')
  (folder / 'listed.csv').write_text('\n'.join(lines) + '\n')
  common = [f'--workdir={run["workdir"]}', '--mode=predict', '--checkpoint=latest',
            f'--config.data.data_dir={run["data_dir"]}']
  r = _main(*common, '--split=test')
  assert r.returncode == 0, r.stderr[-4000:]
  r = _main(*common, f'--input={folder / "listed.csv"}')
  assert r.returncode == 0, r.stderr[-4000:]
  step = max(int(p.name) for p in (run['workdir'] / 'checkpoints').iterdir() if p.name.isdigit())
  split = _rows(run['workdir'] / 'predict' / f'step_{step}' / 'test' / 'predictions.csv')
  listed = _rows(run['workdir'] / 'predict' / f'step_{step}' / 'listed' / 'predictions.csv')
  by_id = {row['id']: row for row in split}
  assert len(split) == 400 and sorted(by_id) == sorted(f'test/{i}' for i in range(400))
  assert [row['id'] for row in listed] == [f'test/{i}' for i in range(10)]
  for row in listed:
    same = by_id[row['id']]
    assert row['label'] == same['label'] != ''
    for k in range(5):
      assert float(row[f'dcg_p_{k}']) == pytest.approx(float(same[f'dcg_p_{k}']), abs=1e-5)


@pytest.mark.slow
def test_resume_past_a_damaged_checkpoint_ends_with_the_same_report(run):
  """The newest checkpoint of a copy of the run with an array file cut short: the resume names
  it, keeps it in damaged/, redoes the steps after the one before it, and reports as the run did."""
  workdir = run['base'] / 'damaged_run'
  shutil.copytree(run['workdir'], workdir)
  shutil.rmtree(workdir / 'reports')
  steps = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  arrays = [p for p in (workdir / 'checkpoints' / str(steps[-1]) / 'state').rglob('*')
            if p.is_file() and p.parent.name == 'd']
  biggest = max(arrays, key=lambda p: p.stat().st_size)
  biggest.write_bytes(biggest.read_bytes()[:biggest.stat().st_size // 3])
  r = _main('--config=configs/demo.py:smoke', f'--workdir={workdir}',
            f'--config.data.data_dir={run["data_dir"]}')
  assert r.returncode == 0, r.stderr[-4000:]
  assert f'checkpoint {workdir}/checkpoints/{steps[-1]} does not restore' in r.stderr
  assert f'resumed from {workdir}/checkpoints/{steps[-2]} at step {steps[-2]}' in r.stderr
  kept = list((workdir / 'damaged').iterdir())
  assert len(kept) == 1 and kept[0].name.startswith(f'{steps[-1]}-')
  got = json.loads((workdir / 'reports' / 'test.json').read_text())
  want = json.loads((run['workdir'] / 'reports' / 'test.json').read_text())
  assert (got['dcg'], got['diffusion'], got['vote']) == (want['dcg'], want['diffusion'],
                                                         want['vote'])
