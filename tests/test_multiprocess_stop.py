"""Two real JAX processes, SIGTERM to one of them: both save the same step and exit 143.

A scheduler may signal one host of a job before the others (or only one). Orbax saves are
collective, so the processes must agree on the step to stop at; the job then resumes from that
checkpoint and finishes with one metrics row per step. Processes as in tests/test_multiprocess.py:
`python -m diffmic_jax.main` with a coordinator on 127.0.0.1, one CPU device each, gloo collectives,
each leading its own process group, SIGKILLed as a group if it outlives the deadline.
"""

import collections
import json
import signal
import subprocess
import sys
import time

import portpicker
import pytest

import subprocesses

DEADLINE_S = 600

pytestmark = pytest.mark.slow  # Two two-process training jobs.


def _rows(workdir):
  path = workdir / 'metrics.jsonl'
  lines = path.read_text().splitlines() if path.exists() else []
  return [json.loads(line) for line in lines if line.endswith('}')]


def _job(workdir, data_dir, cache, log_name, signal_after_step=None):
  """Starts both processes; with `signal_after_step`, SIGTERMs process 1 alone once process 0
  has logged that step. Returns the exit codes and the logs."""
  port = portpicker.pick_unused_port()
  env = subprocesses.cpu_env(1, cache)
  logs = [workdir.parent / f'{log_name}_{i}.log' for i in range(2)]
  procs, started = [], time.time()
  try:
    for i, log in enumerate(logs):
      cmd = [sys.executable, '-m', 'diffmic_jax.main', f'--workdir={workdir}',
             '--config=configs/demo.py:smoke', '--config.train.epochs=3',
             f'--config.data.data_dir={data_dir}', f'--coordinator_address=127.0.0.1:{port}',
             '--num_processes=2', f'--process_id={i}']
      procs.append(subprocesses.start(cmd, env, log))
    deadline = time.monotonic() + DEADLINE_S
    while signal_after_step and procs[1].poll() is None and time.monotonic() < deadline:
      if any(r['step'] >= signal_after_step and r['time'] >= started for r in _rows(workdir)):
        procs[1].send_signal(signal.SIGTERM)
        break
      time.sleep(0.02)
    for p in procs:
      p.wait(timeout=max(1, deadline - time.monotonic()))
  except subprocess.TimeoutExpired:
    pass
  finally:
    subprocesses.kill_survivors(procs)
  return [p.returncode for p in procs], [log.read_text() for log in logs]


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
  workdir, data_dir, cache = tmp_path / 'two', tmp_path / 'tfds', tmp_path / 'jax_cache'
  codes, logs = _job(workdir, data_dir, cache, 'stop', signal_after_step=5)
  assert codes == [143, 143], logs[0][-3000:] + logs[1][-3000:]
  last = logs[0].strip().splitlines()[-1]
  assert last.startswith('stopped by SIGTERM after step ') and '--workdir to resume' in last, last
  step = int(last.split('after step ')[1].split(';')[0])
  assert 5 <= step < 12
  assert f'checkpoint: {workdir / "checkpoints" / str(step)};' in last
  # Both processes joined the save: each one's data-iterator position is in it.
  assert sorted(p.name for p in (workdir / 'checkpoints' / str(step) / 'data').glob('*.json')) == [
      'process_0-of-2.json', 'process_1-of-2.json']
  assert max(r['step'] for r in _rows(workdir)) == step

  codes, logs = _job(workdir, data_dir, cache, 'resume')
  assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
  assert f'checkpoints/{step} at step {step}' in logs[0]
  counts = collections.Counter((r['step'], tuple(sorted(k for k in r if '/' in k)))
                               for r in _rows(workdir))
  assert sorted({s for s, _ in counts}) == list(range(1, 13)) and set(counts.values()) == {1}
