"""The main job's loud failures: a config typo names the field; a non-finite loss names the step
and the last good checkpoint."""

import os
import pathlib
import subprocess
import sys

import pytest

from configs import demo
from diffmic_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('flag,field', [('--config.train.batchsize=3', 'batchsize'),
                                        ('--config.modle.width=3', 'modle')])
def test_config_typo_names_the_field(tmp_path, flag, field):
  run = subprocess.run([sys.executable, '-m', 'diffmic_jax.main', '--config=configs/demo.py:smoke',
                        f'--workdir={tmp_path}', flag], cwd=REPO, capture_output=True, text=True,
                       timeout=120, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert run.returncode != 0
  assert field in run.stderr, run.stderr[-2000:]
  assert not list(tmp_path.iterdir())  # nothing was started


def test_bad_config_argument_and_sampler_are_refused():
  with pytest.raises(ValueError, match="'smoke'"):
    demo.get_config('smok')
  from diffmic_jax import evaluate, train_state
  models = train_state.build_models(demo.get_config('smoke'), steps_per_epoch=3)
  with pytest.raises(ValueError, match="'ddpm'"):
    evaluate.make_predict_fn(models, evaluate.SamplerSpec('ddpm', 10, 1))


@pytest.mark.slow
def test_non_finite_loss_stops_the_run_naming_step_and_checkpoint(tmp_path):
  config = demo.get_config('smoke')
  config.data.data_dir = str(tmp_path / 'tfds')
  config.train.eps_lr = 1e30  # diverges once the warm-up lets the epsilon network move
  from diffmic_jax import data
  data.prepare(config.data)
  with pytest.raises(train.NonFiniteLossError) as err:
    train.train_and_evaluate(config, str(tmp_path / 'work'))
  msg = str(err.value)
  assert 'non-finite training loss' in msg and 'at step ' in msg
  step = int(msg.split('at step ')[1].split(';')[0])
  assert step > config.train.dcg_pretrain_epochs * config.train.steps_per_epoch  # a joint step
  assert 'last good checkpoint: ' + str(tmp_path / 'work' / 'checkpoints') in msg
  good = int(msg.split('last good checkpoint: ')[1].split(';')[0].rsplit('/', 1)[1])
  assert good < step
