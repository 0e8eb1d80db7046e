"""Test set-up: 8 fake CPU devices, parsed absl flags, and where the real images live.

XLA_FLAGS must be set before JAX starts, so it happens here, at import time of the test session.
grain worker processes read absl flags, which must count as parsed outside `absl.app.run`.
"""

import os
import pathlib

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import flags  # noqa: E402
import pytest  # noqa: E402

flags.FLAGS.mark_as_parsed()

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA_ROOT = pathlib.Path(os.environ.get('DIFFMIC_DATA_ROOT', REPO.parent / 'shared' / 'data'))


@pytest.fixture(scope='session')
def data_root() -> pathlib.Path:
  """../shared/data (or $DIFFMIC_DATA_ROOT): the real images tests read."""
  if not DATA_ROOT.is_dir():
    pytest.skip(f'real data folder {DATA_ROOT} is absent (set DIFFMIC_DATA_ROOT)')
  return DATA_ROOT
