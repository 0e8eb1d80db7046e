"""The training loop in-process: CPU tuning only on request, and time-based checkpoints."""

import json

import pytest

from configs import default, demo
from diffmic_jax import data, train, train_state


def test_cpu_tuning_is_opt_in():
  config = default.get_config()
  assert not train_state.cpu_tuned(config)
  config.cpu_tuning = True
  assert train_state.cpu_tuned(config)  # The tests run on the CPU backend.


@pytest.mark.slow
def test_time_based_checkpoints_and_the_cpu_tuned_loop(tmp_path):
  # checkpoint_every_minutes=0: a save at every step, all by time, with the CPU-tuned loop (one
  # step in flight, memory released after compiling and validating).
  config = demo.get_config('smoke')
  config.data.data_dir = str(tmp_path / 'tfds')
  config.cpu_tuning = True
  config.train.checkpoint_every_steps = None
  config.train.checkpoint_every_minutes = 0.0
  config.eval.splits = ()
  data.prepare(config.data)
  workdir = tmp_path / 'work'
  assert train.train_and_evaluate(config, str(workdir)) == {}
  steps = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps == [5, 6]  # every step saved; the last max_to_keep kept
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows if 'train/dcg_ce' in r] == list(range(1, 7))
