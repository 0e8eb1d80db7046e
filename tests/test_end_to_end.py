"""The main job as a user runs it, on real images and 8 fake CPU devices: train, get killed,
resume, finish, evaluate and predict from the checkpoint, and refuse a checkpoint of another model."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

from configs import demo
from diffmic_jax import checkpoint, evaluate, train

REPO = pathlib.Path(__file__).resolve().parents[1]
ARGS = ['--config=configs/demo.py:smoke', '--config.train.epochs=3']


def _main(workdir, *extra, env=None, timeout=600):
  cmd = [sys.executable, '-m', 'diffmic_jax.main', f'--workdir={workdir}', *ARGS, *extra]
  full_env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
              'JAX_PLATFORMS': 'cpu', **(env or {})}
  return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def _losses(workdir):
  """Last logged training scalars per step (a resumed run re-logs the steps after its checkpoint)."""
  rows = {}
  for line in (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines():
    row = json.loads(line)
    if 'train/dcg_ce' in row:
      rows[row['step']] = row
  return rows


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  base = tmp_path_factory.mktemp('e2e')
  data_dir = str(base / 'tfds')
  straight, killed = base / 'straight', base / 'killed'
  flags = [f'--config.data.data_dir={data_dir}']
  a = _main(straight, *flags)
  assert a.returncode == 0, a.stderr[-4000:]
  b = _main(killed, *flags, env={train.FAULT_ENV: '7'})
  assert b.returncode == -signal.SIGKILL, b.stderr[-4000:]
  after_kill = sorted(int(p.name) for p in (killed / 'checkpoints').iterdir() if p.name.isdigit())
  c = _main(killed, *flags)
  assert c.returncode == 0, c.stderr[-4000:]
  return {'straight': straight, 'killed': killed, 'after_kill': after_kill, 'resume_log': c.stderr,
          'data_dir': data_dir}


def test_killed_run_resumes_with_same_batches_and_losses(runs):
  assert runs['after_kill'] and max(runs['after_kill']) < 12, runs['after_kill']
  assert 'resumed from' in runs['resume_log']
  want, got = _losses(runs['straight']), _losses(runs['killed'])
  assert sorted(want) == list(range(1, 13)) and sorted(got) == sorted(want)
  for step in want:
    for key in ('train/dcg_ce', 'train/loss', 'train/mse', 'train/mmd_global'):
      if key in want[step]:
        np.testing.assert_allclose(got[step][key], want[step][key], rtol=1e-5, err_msg=f'{key}@{step}')


def test_files_a_user_gets(runs):
  work = runs['straight']
  report = json.loads((work / 'reports' / 'test.json').read_text())
  assert report['n'] == 400 and report['split'] == 'test'
  assert "best" in report['protocol'] and 'validation' in report['protocol']
  for who in ('dcg', 'diffusion', 'vote'):
    assert 0.0 <= report[who]['accuracy'] <= 1.0
    assert np.asarray(report[who]['confusion_matrix']).sum() == 400
  for name in ('test.txt', 'test_confusion.png', 'test_reliability.png'):
    assert (work / 'reports' / name).stat().st_size > 0, name
  assert list((work / 'tensorboard').iterdir())
  assert (work / 'best').is_dir() and (work / 'config_train.json').exists()
  val = [json.loads(l) for l in (work / 'metrics.jsonl').read_text().splitlines() if 'val/dcg_accuracy' in l]
  assert len(val) == 4  # end of stage 1, then every joint epoch


def test_evaluate_and_predict_from_checkpoint(runs):
  config = demo.get_config('smoke')
  config.train.epochs = 3
  config.data.data_dir = runs['data_dir']
  results = evaluate.evaluate_checkpoint(config, str(runs['straight']), 'best')
  saved = json.loads((runs['straight'] / 'reports' / 'test.json').read_text())
  assert results['test']['diffusion']['accuracy'] == pytest.approx(saved['diffusion']['accuracy'])
  config.eval.save_saliency = True
  out = evaluate.predict(config, str(runs['straight']), 'latest', split='test')
  lines = pathlib.Path(out['test']['csv']).read_text().splitlines()
  assert len(lines) == 401
  assert list((pathlib.Path(out['test']['dir']) / 'saliency').glob('*.png'))


def test_checkpoint_of_another_model_is_refused(runs):
  config = demo.get_config('smoke')
  config.data.data_dir = runs['data_dir']
  config.model.feature_dim = 32
  with pytest.raises(checkpoint.ConfigMismatchError, match='model.feature_dim'):
    evaluate.restore(config, str(runs['straight']), 'best')
