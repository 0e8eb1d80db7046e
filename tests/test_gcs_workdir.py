"""A literal gs:// workdir, against a real GCS server on 127.0.0.1 (tests/gcs_emulator.py).

Nothing is mocked: gcsfs (behind etils.epath) and TensorStore (behind Orbax) speak HTTP to the
emulator exactly as they would to Google's. Covered: main.py's config write and dataset build,
metrics.jsonl surviving a resume on an object store that cannot append, TensorBoard events,
the report and prediction files, and an Orbax checkpoint (state, grain iterator position, meta)
saved to and restored from the bucket. A whole `--workdir=gs://...` training run is left out:
each of these writers is covered here, and the run would cost as much as the end-to-end test.
"""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

from configs import demo
from conftest import GCS_BUCKET as BUCKET, REPO
from diffmic_jax import checkpoint, data, report
from diffmic_jax.metric_writer import MetricWriter

pytestmark = pytest.mark.slow  # A GCS server and a subprocess of main.


@pytest.fixture(scope='module')
def prepared(gcs, tmp_path_factory):
  """`main.py --mode=prepare --workdir=gs://...`: the config goes there, the data to local disk."""
  data_dir = tmp_path_factory.mktemp('gcs') / 'tfds'
  workdir = f'gs://{BUCKET}/prepare'
  run = subprocess.run([sys.executable, '-m', 'diffmic_jax.main', '--mode=prepare',
                        '--config=configs/demo.py:smoke', f'--workdir={workdir}',
                        f'--config.data.data_dir={data_dir}'], cwd=REPO, capture_output=True,
                       text=True, timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu', **gcs})
  assert run.returncode == 0, run.stderr[-4000:]
  return {'workdir': workdir, 'data_dir': str(data_dir)}


def test_main_writes_its_config_to_the_bucket(prepared):
  saved = json.loads((epath.Path(prepared['workdir']) / 'config_prepare.json').read_text())
  assert saved['data']['data_dir'] == prepared['data_dir']
  assert saved['model']['width'] == demo.get_config('smoke').model.width


def test_metrics_survive_a_resume_on_an_object_store(gcs):
  workdir = f'gs://{BUCKET}/metrics'
  first = MetricWriter(workdir, enabled=True, flush_secs=0)  # Every write reaches the bucket.
  first.write(1, {'loss': np.float32(0.5), 'image': np.zeros(3)}, prefix='train/')
  lines = (epath.Path(workdir) / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(l)['train/loss'] for l in lines] == [0.5]  # visible before close
  first.write(2, {'loss': 0.25}, prefix='train/')
  first.close()
  resumed = MetricWriter(workdir, enabled=True)  # The default: a rewrite at most every 30 s.
  resumed.write(3, {'accuracy': 0.75}, prefix='val/')
  resumed.close()
  rows = [json.loads(l) for l in (epath.Path(workdir) / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows] == [1, 2, 3]
  assert rows[1]['train/loss'] == 0.25 and rows[2]['val/accuracy'] == 0.75
  events = list((epath.Path(workdir) / 'tensorboard').iterdir())
  assert events and all(e.stat().length > 0 for e in events)


def test_reports_and_predictions_in_the_bucket(gcs):
  from test_report import _results  # The same results the local report test writes.
  out = f'gs://{BUCKET}/run/reports'
  paths = report.write_report(_results(), out, 'test')
  assert all(p.startswith(out + '/') for p in paths.values())
  assert json.loads(epath.Path(paths['json']).read_text())['split'] == 'test'
  assert 'diffusion (mean)' in epath.Path(paths['txt']).read_text()
  for key in ('confusion', 'reliability'):
    assert epath.Path(paths[key]).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', key
  probs = np.full((4, 3), 1 / 3)
  csv = report.write_predictions_csv(f'gs://{BUCKET}/run/predictions.csv', list(range(4)),
                                     [0, 1, 2, 0], probs, [0, 0, 0, 0], np.ones(4), probs)
  assert len(epath.Path(csv).read_text().splitlines()) == 5
  png = report.save_saliency_overlay(f'gs://{BUCKET}/run/saliency/00000.png',
                                     np.zeros((28, 28, 3), np.uint8), np.ones((7, 7)),
                                     [[0, 0, 14, 14]], [1.0])
  assert epath.Path(png).read_bytes()[:4] == b'\x89PNG'


def test_orbax_checkpoint_round_trip_through_the_bucket(prepared):
  config = demo.get_config('smoke')
  config.data.data_dir = prepared['data_dir']
  it = data.make_train_iterator(config.data, image_size=config.image_size,
                                global_batch_size=config.train.batch_size, seed=config.seed)
  next(it)
  state = {'w': jnp.arange(6.0).reshape(2, 3), 'step': jnp.int32(7)}
  workdir = f'gs://{BUCKET}/ckpt'
  ckpt = checkpoint.Checkpointer(workdir)
  ckpt.save(7, state, it, config, {'best': {'score': 0.5}})
  ckpt.save(7, state, None, config, {'best': {'score': 0.5}}, best=True)
  ckpt.wait()
  ckpt.close()
  expected = next(it)['image']
  assert (epath.Path(workdir) / 'checkpoints' / '7').is_dir()

  fresh = data.make_train_iterator(config.data, image_size=config.image_size,
                                   global_batch_size=config.train.batch_size, seed=config.seed)
  again = checkpoint.Checkpointer(workdir)
  assert again.latest_step() == 7 and again.latest_step(best=True) == 7
  restored, meta = again.restore(7, checkpoint.abstract_like(state), config, fresh)
  again.close()
  np.testing.assert_array_equal(restored['w'], state['w'])
  assert int(restored['step']) == 7 and meta['best']['score'] == 0.5
  np.testing.assert_array_equal(next(fresh)['image'], expected)  # resumes with the same batch
