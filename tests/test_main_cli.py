"""`python -m diffmic_jax.main` as a user meets it: one-line errors that write nothing, a quiet
console that says what runs and where it writes, and the CPU tuning only when asked for."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

SMOKE = '--config=configs/demo.py:smoke'


def _main(*args, timeout=300):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, '-m', 'diffmic_jax.main', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _lines(text: str) -> list[str]:
  return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize('args,named', [
    (['--config=configs/nope.py'], 'configs/nope.py'),
    (['--config=configs/demo.py:smok'], "'smok'"),
    ([SMOKE, '--config.modle.width=3'], 'modle'),
    ([SMOKE, '--config.train.select_metric=f1'], 'train.select_metric'),
    ([SMOKE, '--config.model.width=abc'], 'model.width'),
    ([SMOKE, '--mode=bogus'], '--mode'),
    ([SMOKE, '--config.model.pretrained=/nonexistent/r50.msgpack'], 'model.pretrained'),
])
def test_a_user_error_is_one_line_and_writes_nothing(tmp_path, args, named):
  run = _main(*args, f'--workdir={tmp_path / "work"}')
  assert run.returncode == 2, run.stderr[-3000:]
  lines = _lines(run.stderr)
  assert len(lines) == 1 and lines[0].startswith('error: ') and named in lines[0], run.stderr[-3000:]
  assert not (tmp_path / 'work').exists()


def test_debug_shows_the_traceback(tmp_path):
  run = _main(SMOKE, '--config.train.select_metric=f1', f'--workdir={tmp_path}', '--debug')
  assert run.returncode != 0 and 'Traceback' in run.stderr and 'select_metric' in run.stderr


@pytest.mark.slow
def test_a_data_error_is_one_line_after_the_start_up_summary(tmp_path):
  """Training an image folder that is not there: the summary (with the note on random weights),
  then the error naming the missing file, and no workdir."""
  run = _main('--config=configs/placenta.py:smoke', f'--workdir={tmp_path / "work"}',
              f'--config.data.manual_dir={tmp_path / "nowhere"}',
              f'--config.data.data_dir={tmp_path / "tfds"}')
  assert run.returncode == 2, run.stderr[-3000:]
  assert 'Traceback' not in run.stderr
  lines = _lines(run.stderr)
  assert lines[-1].startswith('error: ') and 'labels.csv' in lines[-1], lines
  assert 'random weights' in run.stderr and 'diffmic-convert-weights' in run.stderr
  assert not (tmp_path / 'work').exists()


@pytest.mark.slow
def test_quiet_console_and_the_cpu_tuning_switch(tmp_path):
  data_dir = f'--config.data.data_dir={tmp_path / "tfds"}'
  run = _main(SMOKE, '--mode=prepare', f'--workdir={tmp_path / "a"}', data_dir)
  assert run.returncode == 0, run.stderr[-3000:]
  out = run.stdout + run.stderr
  for noise in ('Unable to initialize backend', 'Downloading and preparing', 'Using custom data',
                'Generating splits', 'dcg_backbone'):
    assert noise not in out, (noise, out[-3000:])
  assert 'diffmic-jax prepare' in out and f'writes to {tmp_path / "a"}' in out
  assert 'CPU tuning on: glibc keeps freed memory (in force)' in out  # The demo asks for it.
  saved = json.loads((tmp_path / 'a' / 'config_prepare.json').read_text())
  assert saved['model']['dcg_backbone'] == 'resnet_tiny' and saved['cpu_tuning'] is True

  off = _main(SMOKE, '--mode=prepare', f'--workdir={tmp_path / "b"}', data_dir,
              '--config.cpu_tuning=False')
  assert off.returncode == 0, off.stderr[-3000:]
  assert 'CPU tuning' not in off.stdout + off.stderr
