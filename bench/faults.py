"""Fault injection: runs killed at random moments of each phase, then resumed, end as if never killed.

A small real recipe (`configs/demo.py:smoke`: real RetinaMNIST fundus photos, both training
stages, validation-chosen checkpoint, test report) is run once straight through, then, for each
phase and each signal, --trials times: started in a fresh workdir, sent SIGKILL or SIGTERM at a
random moment of that phase, and resumed with the same command until it finishes. A trial
survives when the resumed run exits 0 with the straight run's final report (the same metrics,
exactly) and metrics.jsonl holds one row per step and kind, the straight run's rows in its order,
with the same training losses.

Phases, and how the moment is found (polling the run's log and workdir every 10 ms):
  build       the dataset build into a fresh data_dir has started ("Building" logged); a random
              0-2 s later
  compile     the run is set up and compiling its first step; a random 0-3 s after set-up
  step        a random 0-1 s after the first training row
  save        while an asynchronous checkpoint save is in flight (Orbax's temporary folder exists)
  validation  once the training row of the step that ends stage 1 is written, before its
              validation row: the validation (with its first compilation) is running
  final_eval  a random 0-3 s after "training done": restoring the best checkpoint and sampling
              the test split

The signalled run's exit status and what it printed last are kept per trial. All runs share one
JAX compilation cache, as resumed jobs on one machine do.

    python bench/faults.py [--trials=1] [--phases=build,compile,...] [--seed=0]

Prints a table and writes bench/results/faults.json.
"""

import collections
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
PHASES = ('build', 'compile', 'step', 'save', 'validation', 'final_eval')
SIGNALS = {'SIGKILL': signal.SIGKILL, 'SIGTERM': signal.SIGTERM}
ARGS = ['--config=configs/demo.py:smoke']
PRE_STEPS = 3  # Stage 1 of the smoke recipe: one epoch of 3 steps.
TIMEOUT_S = 900

flags.DEFINE_integer('trials', 1, 'Killed runs per phase and signal.')
flags.DEFINE_list('phases', list(PHASES), 'Phases to inject faults in.')
flags.DEFINE_list('signals', list(SIGNALS), 'Signals to send.')
flags.DEFINE_integer('seed', 0, 'Seed of the random moments.')
flags.DEFINE_string('out', str(REPO / 'bench' / 'results' / 'faults.json'), 'JSON written here.')
FLAGS = flags.FLAGS


def _env(cache: pathlib.Path) -> dict:
  return {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3',
          'PYTHONPATH': str(REPO), 'JAX_COMPILATION_CACHE_DIR': str(cache),
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
          'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}


def _rows(workdir: pathlib.Path) -> list[dict]:
  path = workdir / 'metrics.jsonl'
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.endswith('}')]


def _saving(workdir: pathlib.Path) -> bool:
  """An asynchronous save in flight: Orbax writes under a temporary name, renamed when done."""
  for sub in ('checkpoints', 'best'):
    folder = workdir / sub
    if folder.exists() and any('tmp' in p.name for p in folder.iterdir()):
      return True
  return False


def _start(workdir, data_dir, cache, log):
  cmd = [sys.executable, '-m', 'diffmic_jax.main', f'--workdir={workdir}', *ARGS,
         f'--config.data.data_dir={data_dir}']
  with open(log, 'w') as f:
    return subprocess.Popen(cmd, cwd=REPO, env=_env(cache), stdout=f, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _finish(proc, log) -> tuple[int, str]:
  try:
    proc.wait(timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
  return proc.returncode, pathlib.Path(log).read_text()


def _trigger(phase: str, proc, workdir: pathlib.Path, log: pathlib.Path, rng) -> float | None:
  """Waits for `phase` and a random moment in it; returns the delay drawn, None if the run ended
  before the phase came."""
  def text():
    return log.read_text() if log.exists() else ''

  def wait_for(cond) -> bool:
    while proc.poll() is None:
      if cond():
        return True
      time.sleep(0.01)
    return False

  if phase == 'build':
    found, delay = wait_for(lambda: 'Building ' in text()), rng.uniform(0, 2)
  elif phase == 'compile':
    found, delay = wait_for(lambda: 'steps per epoch' in text()), rng.uniform(0, 3)
  elif phase == 'step':
    found, delay = wait_for(lambda: any('train/dcg_ce' in r for r in _rows(workdir))), rng.uniform(0, 1)
  elif phase == 'save':
    found, delay = wait_for(lambda: _saving(workdir)), 0.0
  elif phase == 'validation':
    found, delay = wait_for(lambda: any(r['step'] == PRE_STEPS and 'train/dcg_ce' in r
                                        for r in _rows(workdir))), 0.0
  elif phase == 'final_eval':
    found, delay = wait_for(lambda: 'training done' in text()), rng.uniform(0, 3)
  else:
    raise ValueError(phase)
  if not found:
    return None
  time.sleep(delay)
  return delay


def _phase_when_signalled(workdir: pathlib.Path, log_text: str) -> str:
  """What the run had reached when signalled, from what it left (for the table's honesty)."""
  rows = _rows(workdir)
  if 'training done' in log_text:
    return 'final_eval'
  if not rows:
    return 'build' if 'Built ' not in log_text and 'Using the build' not in log_text else 'compile'
  return f'step {max(r["step"] for r in rows)}'


def _report(workdir: pathlib.Path) -> dict | None:
  path = workdir / 'reports' / 'test.json'
  if not path.exists():
    return None
  report = json.loads(path.read_text())
  return {k: report[k] for k in ('n', 'dcg', 'diffusion', 'vote', 'mean_uncertainty')}


def _row_keys(rows):
  return [(r['step'], tuple(sorted(k for k in r if '/' in k))) for r in rows]


def _compare(straight: pathlib.Path, resumed: pathlib.Path) -> list[str]:
  """What differs from the straight run (empty: survived)."""
  problems = []
  if _report(resumed) != _report(straight):
    problems.append('final report differs')
  want, got = _rows(straight), _rows(resumed)
  counts = collections.Counter(_row_keys(got))
  if [k for k, n in counts.items() if n > 1]:
    problems.append(f'duplicate rows {[k for k, n in counts.items() if n > 1][:3]}')
  if _row_keys(got) != _row_keys(want):
    problems.append('metrics rows differ from the straight run')
  losses = lambda rows: {r['step']: {k: v for k, v in r.items() if k.startswith('train/')}
                         for r in rows if 'train/dcg_ce' in r}
  if losses(got) != losses(want):
    problems.append('training losses differ')
  return problems


def _trial(phase, sig_name, t, base, straight, data_dir, cache, rng) -> dict:
  """One run signalled in `phase`, then resumed to its end and compared with the straight run."""
  name = f'{phase}_{sig_name}_{t}'
  workdir = base / name
  trial_data = base / f'tfds_{name}' if phase == 'build' else data_dir
  log = base / f'{name}.log'
  proc = _start(workdir, trial_data, cache, log)
  delay = _trigger(phase, proc, workdir, log, rng)
  reached = None
  if delay is not None and proc.poll() is None:
    reached = _phase_when_signalled(workdir, log.read_text())
    os.killpg(proc.pid, SIGNALS[sig_name])
  code, text = _finish(proc, log)
  resumes, resumed_code = 0, None
  while resumed_code != 0 and resumes < 3:  # A signalled resume would need another; none is.
    resumes += 1
    resumed_code, resumed_text = _finish(
        _start(workdir, trial_data, cache, base / f'{name}_resume{resumes}.log'),
        base / f'{name}_resume{resumes}.log')
  problems = [] if resumed_code == 0 else [f'resume exited {resumed_code}: '
                                            f'{resumed_text.strip().splitlines()[-1:]}']
  problems += _compare(straight, workdir) if resumed_code == 0 else []
  last = [line for line in text.strip().splitlines() if line.strip()][-1:] or ['']
  trial = {'phase': phase, 'signal': sig_name, 'trial': t, 'signalled': delay is not None,
           'delay_s': delay, 'reached': reached, 'exit_code': code, 'last_line': last[0][:300],
           'resumes': resumes, 'survived': delay is not None and not problems,
           'problems': problems}
  shutil.rmtree(workdir, ignore_errors=True)
  if phase == 'build':
    shutil.rmtree(trial_data, ignore_errors=True)
  return trial


def main(argv):
  del argv
  rng = random.Random(FLAGS.seed)
  base = pathlib.Path(tempfile.mkdtemp(prefix='diffmic_faults_'))
  cache, data_dir = base / 'jax_cache', base / 'tfds'
  started = time.time()
  straight = base / 'straight'
  code, out = _finish(_start(straight, data_dir, cache, base / 'straight.log'), base / 'straight.log')
  if code != 0:
    raise SystemExit(f'the straight run failed:\n{out[-4000:]}')
  trials = []
  # Each pass covers every phase, the signals alternating over phases and passes, so that a run
  # cut short still has every phase, and each phase meets each signal over two passes.
  order = [(phase, FLAGS.signals[(i + p) % len(FLAGS.signals)], p // len(FLAGS.signals))
           for p in range(FLAGS.trials * len(FLAGS.signals))
           for i, phase in enumerate(FLAGS.phases)]
  for phase, sig_name, t in order:
    try:
      trials.append(_trial(phase, sig_name, t, base, straight, data_dir, cache, rng))
    except Exception as e:  # noqa: BLE001  A harness failure is recorded, not a lost table.
      trials.append({'phase': phase, 'signal': sig_name, 'trial': t, 'signalled': False,
                     'survived': False, 'problems': [f'harness: {type(e).__name__}: {e}']})
    print(json.dumps(trials[-1]), flush=True)
    _write(trials, started, final=False)  # What is done so far, should the run be cut short.
  _write(trials, started, final=True)
  shutil.rmtree(base, ignore_errors=True)


def _write(trials: list[dict], started: float, final: bool) -> None:
  """Prints the table (when `final`) and writes the JSON of the trials so far."""
  table = {}
  for tr in trials:
    row = table.setdefault(tr['phase'], {'runs': 0, 'survived': 0, 'missed': 0,
                                         'signals': collections.Counter()})
    if not tr['signalled']:  # The run ended before the phase was seen: no fault was injected.
      row['missed'] += 1
      continue
    row['runs'] += 1
    row['survived'] += int(tr['survived'])
    row['signals'][tr['signal']] += 1
  total, runs = sum(r['survived'] for r in table.values()), sum(r['runs'] for r in table.values())
  if final:
    _print(table, total, runs)
  commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
  result = {'command': ' '.join(['python', 'bench/faults.py', *sys.argv[1:]]),
            'date': time.strftime('%Y-%m-%d', time.gmtime()), 'commit': commit,
            'complete': final, 'recipe': ' '.join(ARGS), 'seed': FLAGS.seed,
            'trials_per_phase_and_signal': FLAGS.trials,
            'wall_s': round(time.time() - started, 1), 'load_avg': os.getloadavg(),
            'survived': total, 'runs': runs,
            'by_phase': {p: {k: r[k] for k in ('survived', 'runs', 'missed')}
                         for p, r in table.items()},
            'trials': trials}
  pathlib.Path(FLAGS.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(FLAGS.out).write_text(json.dumps(result, indent=1) + '\n')


def _print(table: dict, total: int, runs: int) -> None:
  print(f"\n{'phase':<12} {'survived':>10}   signals")
  for phase, row in table.items():
    print(f"{phase:<12} {row['survived']:>4} of {row['runs']:<3}   "
          + ', '.join(f'{k} x{v}' for k, v in sorted(row['signals'].items()))
          + (f"   ({row['missed']} ended before the phase was seen)" if row['missed'] else ''))
  print(f"{'all':<12} {total:>4} of {runs:<3}")


if __name__ == '__main__':
  app.run(main)
