"""One tiny real training run in-process, both stages, validation and the final test report: the
fast tier's end-to-end check (the slow tier runs main as a user does, kills and resumes it)."""

import json

from configs import demo
from diffmic_jax import data, train


def test_train_and_evaluate_runs_both_stages_and_reports(tmp_path, monkeypatch):
  config = demo.get_config('smoke')
  # With the official trainer's train-mode DCG passes: before stage 1 and between the stages.
  config.train.official_dcg_passes = True
  passes, real = [], train.official_dcg_passes
  def spy(config, models, mesh, state, splits):
    passes.append((int(state.step), splits))
    return real(config, models, mesh, state, splits)
  monkeypatch.setattr(train, 'official_dcg_passes', spy)
  config.data.data_dir = str(tmp_path / 'tfds')
  # ceil(24 / 16) = 2 steps per epoch, as the official DataLoader: the second of 8 images, run
  # replicated on the 8-device mesh.
  config.data.train_split = 'train[:24]'
  config.train.steps_per_epoch = None
  data.prepare(config.data)
  assert train.steps_per_epoch(config) == 2
  results = train.train_and_evaluate(config, str(tmp_path / 'work'))

  assert passes == [(0, ('validation',)), (2, ('train[:24]', 'validation'))]
  report = results['test']
  assert report['n'] == 400 and 0.0 <= report['diffusion']['accuracy'] <= 1.0
  rows = [json.loads(line) for line in (tmp_path / 'work' / 'metrics.jsonl').read_text().splitlines()]
  assert sorted({r['step'] for r in rows if 'train/dcg_ce' in r}) == [1, 2, 3, 4]
  assert any('train/loss' in r for r in rows)  # stage 2 ran
  assert [r['step'] for r in rows if 'val/dcg_accuracy' in r] == [2, 4]
  assert json.loads((tmp_path / 'work' / 'reports' / 'test.json').read_text())['n'] == 400
