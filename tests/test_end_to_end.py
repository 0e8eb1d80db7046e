"""The main job as a user runs it, on real images and 8 fake CPU devices: train; get killed (SIGKILL),
stopped by SIGTERM and by Ctrl-C, resume each time and finish bit-exact with an uninterrupted run;
evaluate and predict from the checkpoint, and refuse a checkpoint of another model."""

import collections
import json
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import subprocesses
from configs import demo
from diffmic_jax import checkpoint, evaluate

REPO = pathlib.Path(__file__).resolve().parents[1]
ARGS = ['--config=configs/demo.py:smoke', '--config.train.epochs=3']
TOTAL = 12  # 3 steps per epoch: 1 epoch of stage 1, 3 of stage 2.
TIMEOUT_S = 900

pytestmark = pytest.mark.slow  # Six training jobs.


def _rows(workdir):
  path = pathlib.Path(workdir) / 'metrics.jsonl'
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.endswith('}')]


def _losses(workdir):
  """Training scalars per step."""
  return {row['step']: row for row in _rows(workdir) if 'train/dcg_ce' in row}


def _run(workdir, flags, cache, log, signal_at=None):
  """Runs main to the end, or until `signal_at = (signal, step, what)`: the signal goes out as soon
  as this run has written a metrics.jsonl row ('row') or a checkpoint ('checkpoint') of that step or
  later. Returns (exit code, its output, the checkpoint steps right after it ended)."""
  cmd = [sys.executable, '-m', 'diffmic_jax.main', f'--workdir={workdir}', *ARGS, *flags]
  started = time.time()
  with open(log, 'w') as err:
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocesses.cpu_env(8, cache), stdout=err,
                            stderr=subprocess.STDOUT)
  try:
    deadline = time.monotonic() + TIMEOUT_S
    while signal_at and proc.poll() is None and time.monotonic() < deadline:
      sig, step, what = signal_at
      if what == 'checkpoint':
        reached = any(s >= step for s in _checkpoints(workdir))  # Orbax names it when complete.
      else:
        reached = any(r['step'] >= step and r['time'] >= started for r in _rows(workdir))
      if reached:
        proc.send_signal(sig)
        break
      time.sleep(0.02)
    proc.wait(timeout=max(1.0, deadline - time.monotonic()))
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  return proc.returncode, log.read_text(), _checkpoints(workdir)


def _checkpoints(workdir):
  where = workdir / 'checkpoints'
  return sorted(int(p.name) for p in where.iterdir() if p.name.isdigit()) if where.exists() else []


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """A straight run, and one run killed, stopped by SIGTERM, stopped by SIGINT and finished."""
  base = tmp_path_factory.mktemp('e2e')
  data_dir, cache = str(base / 'tfds'), base / 'jax_cache'
  straight, stopped = base / 'straight', base / 'stopped'
  flags = [f'--config.data.data_dir={data_dir}']
  code, log, _ = _run(straight, flags, cache, base / 'straight.log')
  assert code == 0, log[-4000:]
  out = {'straight': straight, 'stopped': stopped, 'data_dir': data_dir}
  # SIGKILL once a checkpoint exists to resume from; the others once this run has logged a step
  # past where it resumed.
  for name, signal_at in (('kill', (signal.SIGKILL, 2, 'checkpoint')),
                          ('term', (signal.SIGTERM, 5, 'row')), ('int', (signal.SIGINT, 8, 'row')),
                          ('finish', None)):
    out[name] = dict(zip(('code', 'log', 'ckpts'),
                         _run(stopped, flags, cache, base / f'{name}.log', signal_at)))
    out[name]['rows'] = _rows(stopped)
  assert out['finish']['code'] == 0, out['finish']['log'][-4000:]
  return out


def test_killed_run_resumes_with_same_batches_and_losses(runs):
  assert runs['kill']['code'] == -signal.SIGKILL, runs['kill']['log'][-4000:]
  assert max(runs['kill']['ckpts'], default=0) < TOTAL, runs['kill']['ckpts']
  assert 'resumed from' in runs['term']['log']
  want, got = _losses(runs['straight']), _losses(runs['stopped'])
  assert sorted(want) == list(range(1, TOTAL + 1)) and sorted(got) == sorted(want)
  for step in want:  # Bit-exact: the same batches, keys and programs.
    for key in ('train/dcg_ce', 'train/loss', 'train/mse', 'train/mmd_global'):
      assert got[step].get(key) == want[step].get(key), f'{key}@{step}'


def _check_clean_stop(run, name, code, workdir):
  """Exit code, the one-line message naming the checkpoint, and that checkpoint on disk."""
  assert run['code'] == code, run['log'][-4000:]
  last = run['log'].strip().splitlines()[-1]
  match = re.fullmatch(rf'stopped by {name} after step (\d+); checkpoint: (\S+); run the same '
                       r'command with the same --workdir to resume', last)
  assert match, run['log'][-4000:]
  step = int(match[1])
  assert match[2] == str(workdir / 'checkpoints' / str(step)) and step in run['ckpts']
  assert step < TOTAL and 'Traceback' not in run['log']
  return step


def test_sigterm_saves_a_checkpoint_and_exits_143(runs):
  step = _check_clean_stop(runs['term'], 'SIGTERM', 143, runs['stopped'])
  assert f"checkpoints/{step} at step {step}" in runs['int']['log']  # the next run resumed there
  assert max(r['step'] for r in runs['term']['rows']) == step  # nothing logged past the save


def test_sigint_saves_a_checkpoint_and_exits_130(runs):
  step = _check_clean_stop(runs['int'], 'SIGINT', 130, runs['stopped'])
  assert f"checkpoints/{step} at step {step}" in runs['finish']['log']
  assert step > _check_clean_stop(runs['term'], 'SIGTERM', 143, runs['stopped'])


def test_resumed_runs_leave_one_row_per_step(runs):
  # The killed run logged steps past its last checkpoint; the run resumed from it dropped them.
  counts = collections.Counter((r['step'], tuple(sorted(k for k in r if '/' in k)))
                               for r in runs['finish']['rows'])
  assert counts and set(counts.values()) == {1}, [k for k, n in counts.items() if n > 1]
  assert [k for k in counts] == [(r['step'], tuple(sorted(k for k in r if '/' in k)))
                                 for r in _rows(runs['straight'])]


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
