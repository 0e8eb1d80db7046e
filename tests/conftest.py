"""Test set-up: the two tiers, 8 fake CPU devices, parsed absl flags, the real images, a GCS server,
one trained demo run.

`python -m pytest tests` runs the fast tier; `--slow` adds the tests marked `slow` (subprocess
training jobs and anything over ~20 s); CI runs both. XLA_FLAGS must be set before JAX starts, so
it happens here, at import time of the test run. grain worker processes read absl flags, which
must count as parsed outside `absl.app.run`.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import flags  # noqa: E402
import pytest  # noqa: E402

flags.FLAGS.mark_as_parsed()

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA_ROOT = pathlib.Path(os.environ.get('DIFFMIC_DATA_ROOT', REPO.parent / 'shared' / 'data'))
GCS_BUCKET = 'diffmic-test'  # The one bucket of the `gcs` server.


def pytest_addoption(parser):
  parser.addoption('--slow', action='store_true', default=False,
                   help='also run the tests marked slow (CI runs every tier)')


def pytest_collection_modifyitems(config, items):
  """Without --slow, deselects the tests marked slow."""
  if config.getoption('--slow'):
    return
  slow = [item for item in items if item.get_closest_marker('slow')]
  if slow:
    config.hook.pytest_deselected(items=slow)
    items[:] = [item for item in items if not item.get_closest_marker('slow')]


def sampled_split(rng, n: int, m: int, k: int = 4):
  """(sample_y0 [m, n, k], dcg_prob [n, k], labels [n]): samples scattered around a prior that is
  right more often than not, the shape bench scripts read from a run's cached samples."""
  import numpy as np
  labels = rng.integers(0, k, n)
  logits = 2.0 * np.eye(k)[labels] + rng.normal(0, 1, (n, k))
  dcg = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  return dcg[None] + rng.normal(0, 0.6, (m, n, k)), dcg, labels


def load_bench_script(name: str):
  """bench/<name>.py loaded from its file, for tests of its helpers (bench/ is not a package to
  import from tests)."""
  spec = importlib.util.spec_from_file_location(f'bench_{name}', REPO / 'bench' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='session')
def demo_build(tmp_path_factory):
  """The embedded demo set built once for every test that only reads it."""
  from data_helpers import demo_cfg
  from diffmic_jax import data
  cfg = demo_cfg(tmp_path_factory.mktemp('demo_tfds'))
  data.prepare(cfg)
  return cfg


@pytest.fixture(scope='session')
def data_root() -> pathlib.Path:
  """../shared/data (or $DIFFMIC_DATA_ROOT): the real images tests read."""
  if not DATA_ROOT.is_dir():
    pytest.skip(f'real data folder {DATA_ROOT} is absent (set DIFFMIC_DATA_ROOT)')
  return DATA_ROOT


def run_main(*args, timeout=900) -> subprocess.CompletedProcess:
  """`python -m diffmic_jax.main *args` on 8 CPU devices, this checkout first on the path."""
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
         'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(REPO)}
  return subprocess.run([sys.executable, '-m', 'diffmic_jax.main', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='session')
def demo_run(tmp_path_factory) -> dict:
  """One tiny trained run (`configs/demo.py:smoke`, about 2 minutes), shared by every test of
  what comes after training: {'base', 'workdir', 'data_dir', 'best_step'}."""
  base = tmp_path_factory.mktemp('demo_run')
  workdir, data_dir = base / 'run', base / 'tfds'
  r = run_main('--config=configs/demo.py:smoke', f'--workdir={workdir}',
               f'--config.data.data_dir={data_dir}')
  assert r.returncode == 0, r.stderr[-4000:]
  step = int(json.loads((workdir / 'reports' / 'test.json').read_text())['protocol'].split(
      'checkpoint of step ')[1].split(',')[0])
  return {'base': base, 'workdir': workdir, 'data_dir': data_dir, 'best_step': step}


@pytest.fixture(scope='session')
def gcs(tmp_path_factory):
  """A local GCS server (tests/gcs_emulator.py) that gcsfs and TensorStore talk to.

  One per test run: epath caches its gcsfs file system, whose listing cache would outlive a
  server. Yields the environment a subprocess needs to reach it too.
  """
  # Looked up, not imported: gcsfs reads GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT (set below) at import.
  missing = [m for m in ('gcsfs', 'gcp_storage_emulator') if importlib.util.find_spec(m) is None]
  if missing:
    pytest.skip(f"{', '.join(missing)} not installed: pip install -e '.[test]'")
  import portpicker
  port = portpicker.pick_unused_port()
  log = tmp_path_factory.mktemp('gcs_emulator') / 'stderr.log'  # A file: a pipe could fill up.
  with open(log, 'w') as err:
    proc = subprocess.Popen(
        [sys.executable, str(REPO / 'tests' / 'gcs_emulator.py'), str(port), GCS_BUCKET],
        stdout=subprocess.PIPE, stderr=err, text=True)
  env = {'STORAGE_EMULATOR_HOST': f'http://127.0.0.1:{port}',  # gcsfs
         'TENSORSTORE_GCS_HTTP_URL': f'http://127.0.0.1:{port}',  # Orbax's array writes
         # gcsfs would ask the Storage Control API (gRPC, not emulated) for the bucket type.
         'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false'}
  saved = {k: os.environ.get(k) for k in env}
  try:
    assert proc.stdout.readline().strip() == 'ready', log.read_text()[-4000:]
    os.environ.update(env)
    yield env
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=10)
