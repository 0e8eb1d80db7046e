"""Two real JAX processes on one host train and evaluate like one process with the same batch.

The processes are `python -m diffmic_jax.main` with `--coordinator_address=127.0.0.1:PORT`, one CPU
device each, talking through JAX's gloo CPU collectives (diffmic_jax/distributed.py). They build
the dataset (process 0 builds, process 1 waits at the barrier), train the smoke config with
Orbax saves from both processes, restore the best checkpoint for the final evaluation, and then
restore it again in a fresh two-process `--mode=evaluate` job. The reference is one process with
two devices reading the same two data shards (tests/one_process_as_many.py), so both see the same
global batch of 16 (8 per device: see test_parallel.py for why not 2).

On JAX 0.10.2 (CPU) the two agree bit for bit: every logged loss and validation score, and all
214 parameter / BatchNorm leaves of the final checkpoint; the tolerances below leave room for
other reduction orders. Most of the test's time is XLA compilation; a per-test persistent
compilation cache lets the evaluate job reuse the train job's programs.
Every subprocess runs in its own process group under a deadline; on failure or timeout the whole
group is SIGKILLed (a process stuck in a collective ignores SIGTERM).
"""

import json
import pathlib
import re
import subprocess
import sys
import time

import jax
import numpy as np
import portpicker
import pytest

import subprocesses
from configs import demo
from diffmic_jax import evaluate

pytestmark = pytest.mark.slow  # Two-process training jobs.

REPO = pathlib.Path(__file__).resolve().parents[1]
SMOKE = ['--config=configs/demo.py:smoke']
DEADLINE_S = 300  # Per job: room for cold compilation on a small, loaded CPU host.


def _run_job(cmds: list[list[str]], env: dict, logs: list[pathlib.Path]) -> None:
  """Starts every command at once; all must exit 0 within DEADLINE_S, else all are killed."""
  procs = []
  try:
    procs = [subprocesses.start(cmd, env, log) for cmd, log in zip(cmds, logs)]
    deadline = time.monotonic() + DEADLINE_S
    for p in procs:
      p.wait(timeout=max(1, deadline - time.monotonic()))
  except subprocess.TimeoutExpired:
    pass
  finally:
    subprocesses.kill_survivors(procs)
  for p, log in zip(procs, logs):
    assert p.returncode == 0, f'{log.name}: exit {p.returncode}\n' + log.read_text()[-4000:]


def _two_processes(workdir, data_dir, cache, *extra):
  port = portpicker.pick_unused_port()
  cmds = [[sys.executable, '-m', 'diffmic_jax.main', f'--workdir={workdir}', *SMOKE,
           f'--config.data.data_dir={data_dir}', f'--coordinator_address=127.0.0.1:{port}',
           '--num_processes=2', f'--process_id={i}', *extra] for i in range(2)]
  mode = next((a.split('=')[1] for a in extra if a.startswith('--mode=')), 'train')
  _run_job(cmds, subprocesses.cpu_env(1, cache), [workdir.parent / f'{workdir.name}_{mode}_{i}.log' for i in range(2)])


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  base = tmp_path_factory.mktemp('multiprocess')
  data_dir, cache, two, one = base / 'tfds', base / 'jax_cache', base / 'two', base / 'one'
  start = time.monotonic()
  _two_processes(two, data_dir, cache)
  train_report = json.loads((two / 'reports' / 'test.json').read_text())
  _run_job([[sys.executable, str(REPO / 'tests' / 'one_process_as_many.py'), '--processes=2',
             f'--workdir={one}', *SMOKE, f'--config.data.data_dir={data_dir}']],
           subprocesses.cpu_env(2, cache), [base / 'one.log'])
  _two_processes(two, data_dir, cache, '--mode=evaluate', '--checkpoint=best')
  print(f'multiprocess jobs: {time.monotonic() - start:.0f} s')
  return {'two': two, 'one': one, 'base': base, 'data_dir': data_dir,
          'two_train_report': train_report}


def _rows(workdir) -> dict:
  rows = {}
  for line in (workdir / 'metrics.jsonl').read_text().splitlines():
    row = json.loads(line)
    rows.setdefault(row['step'], {}).update({k: v for k, v in row.items() if '/' in k})
  return rows


def test_losses_and_validation_equal_one_process(runs):
  two, one = _rows(runs['two']), _rows(runs['one'])
  assert sorted(two) == sorted(one) == list(range(1, 7))
  for step in one:
    assert sorted(two[step]) == sorted(one[step]), step
    for k in one[step]:  # Measured: equal to 7 digits.
      np.testing.assert_allclose(two[step][k], one[step][k], rtol=1e-4, atol=1e-6,
                                 err_msg=f'{k}@{step}')
  assert 'train/loss' in two[6] and 'val/accuracy' in two[6]


def test_parameters_equal_one_process(runs):
  # Both processes joined every save; here the test process (8 CPU devices) restores the final
  # periodic checkpoints and compares each leaf with a tolerance relative to the last update
  # (step 4 -> 6) of the one-process run, as test_parallel.py does with the update from init.
  config = demo.get_config('smoke')
  config.data.data_dir = str(runs['data_dir'])
  state = {}
  for name, which in (('two', '6'), ('one', '6'), ('one_4', '4')):
    workdir = runs['two' if name == 'two' else 'one']
    state[name] = jax.device_get(evaluate.restore(config, str(workdir), which).state)
  assert int(state['two'].step) == int(state['one'].step) == 6
  leaves = lambda s: jax.tree_util.tree_leaves_with_path(
      {'dcg': s.dcg.params, 'eps': s.eps.params, 'bn': (s.dcg.batch_stats, s.eps.batch_stats)})
  total_diff = total = 0.0
  for (path, b), (_, a), (_, a4) in zip(leaves(state['two']), leaves(state['one']),
                                        leaves(state['one_4'])):
    diff = np.linalg.norm(np.asarray(b) - a)
    size = np.linalg.norm(np.asarray(a) - a4)
    assert diff <= 1e-3 * size + 1e-6, (jax.tree_util.keystr(path), diff, size)
    total_diff, total = total_diff + diff**2, total + size**2
  assert np.sqrt(total_diff) <= 1e-4 * np.sqrt(total), (np.sqrt(total_diff), np.sqrt(total))


def test_evaluation_after_restore_equals_one_process(runs):
  # The fresh two-process evaluate job restored the best checkpoint (every process joined) and
  # evaluated the padded test split: 400 examples, each once, same scores as both references.
  two = json.loads((runs['two'] / 'eval' / 'step_6' / 'test' / 'report.json').read_text())
  one = json.loads((runs['one'] / 'reports' / 'test.json').read_text())
  for report in (two, runs['two_train_report']):
    assert report['n'] == one['n'] == 400
    for who in ('dcg', 'diffusion', 'vote'):
      assert report[who]['accuracy'] == pytest.approx(one[who]['accuracy']), who
      assert np.asarray(report[who]['confusion_matrix']).sum() == 400
  assert 'checkpoint of step 6' in two['protocol']


def test_files_and_logs_come_from_process_zero(runs):
  two, base = runs['two'], runs['base']
  assert len((two / 'metrics.jsonl').read_text().splitlines()) == len(
      (runs['one'] / 'metrics.jsonl').read_text().splitlines())
  # Each process saved its own data-iterator position into the shared checkpoint.
  assert sorted(p.name for p in (two / 'checkpoints' / '6' / 'data').glob('*.json')) == [
      'process_0-of-2.json', 'process_1-of-2.json']
  for mode in ('train', 'evaluate'):
    log0, log1 = [(base / f'two_{mode}_{i}.log').read_text() for i in range(2)]
    assert 'process 0 of 2' in log0 and 'process 1 of 2' in log1
    # After start-up, process 1 logs only warnings: no INFO line from the loop or the reports.
    chatter = [l for l in log1.splitlines() if re.match(r'I\d{4} .* (?!distributed)\w+\.py:', l)]
    assert not chatter, chatter[:5]
