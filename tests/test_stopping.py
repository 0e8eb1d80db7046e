"""The parts of a clean stop, in-process: signal handling and the agreed step boundary, the
per-stage remaining-time estimate, and metrics.jsonl losing the rows a resumed run rewrites."""

import json
import os
import signal

import numpy as np
import pytest

from diffmic_jax import parallel, preemption, progress
from diffmic_jax.metric_writer import MetricWriter


@pytest.mark.parametrize('agree', [False, True])
def test_a_signal_stops_at_the_next_boundary_agreed_one_step_late(agree):
  # agree=True is the multi-process path (a max over the 8 devices of the mesh), run here by one
  # process: its answer is the flags of the previous boundary.
  before = signal.getsignal(signal.SIGTERM)
  with preemption.StepBoundary(parallel.make_mesh(), None, agree=agree) as boundary:
    assert boundary.poll() == (0, False)
    os.kill(os.getpid(), signal.SIGTERM)
    assert boundary.signum == signal.SIGTERM
    first = boundary.poll()
    second = boundary.poll()
  assert (first, second) == (((0, False), (15, False)) if agree else ((15, False), (15, False)))
  assert signal.getsignal(signal.SIGTERM) is before  # Outside the loop, SIGTERM acts as usual.


def test_second_ctrl_c_aborts_without_saving():
  with preemption.StepBoundary(parallel.make_mesh(), None, agree=False) as boundary:
    os.kill(os.getpid(), signal.SIGINT)
    assert boundary.poll() == (signal.SIGINT, False)
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)


def test_time_based_saves_are_agreed_and_not_repeated():
  boundary = preemption.StepBoundary(parallel.make_mesh(), save_every_s=0.0, agree=True)
  assert boundary.poll() == (0, False)  # Nothing reduced yet.
  assert boundary.poll() == (0, True)  # The previous boundary's request: save now.
  boundary.saved()
  # The request taken before that save was served by it; the one taken after it stands.
  assert boundary.poll() == (0, False)
  assert boundary.poll() == (0, True)


def test_stopped_exits_like_the_signal_and_says_where_to_resume():
  stop = preemption.Stopped(signal.SIGTERM, 7, '/w/checkpoints/7')
  assert isinstance(stop, SystemExit) and stop.code == 143
  assert preemption.Stopped(signal.SIGINT, 7, '/w/checkpoints/7').code == 130
  assert str(stop) == ('stopped by SIGTERM after step 7; checkpoint: /w/checkpoints/7; run the same '
                       'command with the same --workdir to resume')


class _Clock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def test_eta_uses_the_stage_own_steps_without_compile_and_validation():
  clock = _Clock()
  stage = progress.StageClock(clock)
  for took in (30.0, 5.0, 1.0, 1.0, 1.0):  # compile, wait for it, then steady 1 s steps
    clock.now += took
    stage.step_done()
  assert stage.step_s == pytest.approx(1.0)
  with stage.paused(validation=True):
    clock.now += 20.0
  clock.now += 1.0
  stage.step_done()
  assert stage.step_s == pytest.approx(1.0)  # the validation is not a step
  assert stage.remaining_s(10, 2) == pytest.approx(10 * 1.0 + 2 * 20.0)
  assert progress.StageClock(clock).remaining_s(10, 0) is None  # no measurement yet: '?'
  assert progress.format_seconds(3725) == '1:02:05' and progress.format_seconds(65) == '1:05'


def test_stage_bar_estimates_each_stage_apart():
  # A stage-2 bar knows nothing of stage 1's fast steps: no estimate until its own steps are timed.
  bar = progress.StageBar('stage 2', 10, 20, 10, [15, 20], enabled=False)
  bar.clock = progress.StageClock(clock := _Clock())
  for step in range(11, 15):
    clock.now += 4.0
    bar.update(step)
  assert bar.clock.step_s == pytest.approx(4.0)  # steps 13 and 14: 11 compiled, 12 waited
  assert bar.eta(14) is None  # its validations are not timed yet
  assert bar.eta_text(14) == '>0:24'  # a lower bound meanwhile: 6 steps of 4 s
  with bar.clock.paused(validation=True):
    clock.now += 3.0
  assert bar.eta(15) == pytest.approx(5 * 4.0 + 1 * 3.0)
  bar.close()


def _rows(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_resumed_writer_drops_rows_after_the_restored_step(tmp_path):
  first = MetricWriter(tmp_path, enabled=True)
  for step in range(1, 8):
    first.write(step, {'loss': np.float32(step)}, prefix='train/')
  first.write(6, {'accuracy': 0.5}, prefix='val/')
  first.close()
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 8, "train/lo')  # a line cut short by a kill
  resumed = MetricWriter(tmp_path, enabled=True, resumed_step=6)
  resumed.write(7, {'loss': 7.0}, prefix='train/')
  resumed.close()
  rows = _rows(tmp_path / 'metrics.jsonl')
  assert [(r['step'], *[k for k in r if '/' in k]) for r in rows] == (
      [(s, 'train/loss') for s in range(1, 7)] + [(6, 'val/accuracy'), (7, 'train/loss')])
  fresh = MetricWriter(tmp_path, enabled=True, resumed_step=0)  # no checkpoint: a new start
  fresh.close()
  assert _rows(tmp_path / 'metrics.jsonl') == []


def test_resumed_writer_drops_rows_on_an_object_store_too(gcs):
  from etils import epath
  from conftest import GCS_BUCKET
  workdir = f'gs://{GCS_BUCKET}/resumed_metrics'
  first = MetricWriter(workdir, enabled=True)
  for step in range(1, 6):
    first.write(step, {'loss': float(step)}, prefix='train/')
  first.close()
  resumed = MetricWriter(workdir, enabled=True, resumed_step=3)
  # Dropped at once, before anything is written: a run killed now leaves no duplicate behind.
  assert [r['step'] for r in _rows(epath.Path(workdir) / 'metrics.jsonl')] == [1, 2, 3]
  resumed.write(4, {'loss': 4.0}, prefix='train/')
  resumed.close()
  assert [r['step'] for r in _rows(epath.Path(workdir) / 'metrics.jsonl')] == [1, 2, 3, 4]
