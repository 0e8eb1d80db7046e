"""One progress bar per training stage, with a remaining-time estimate from that stage's own steps.

The estimate is: remaining steps x the mean time of this stage's steady steps, plus remaining
validations x the last validation's time. Steady steps leave out the stage's first two steps (the
first compiles the stage's program and the second waits for it) and the time spent in validations
and checkpoint saves, which are timed apart (`paused`). Each stage starts its estimate afresh, so
stage 1's cheaper steps never stand in for stage 2's.
"""

import contextlib
import sys
import time

from tqdm import tqdm

WARMUP_STEPS = 2  # The first step compiles; the second one's dispatch waits for it.


def format_seconds(s: float | None) -> str:
  if s is None:
    return '?'
  s = int(round(s))
  return f'{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}' if s >= 3600 else f'{s // 60}:{s % 60:02d}'


class StageClock:
  """Step and validation timings of one stage, and the remaining-time estimate they give."""

  def __init__(self, clock=time.monotonic):
    self._clock = clock
    self._last = None
    self._paused = 0.0
    self._seen = 0
    self._step_times: list[float] = []
    self.validation_s: float | None = None

  def step_done(self) -> None:
    """Marks the end of a step (its dispatch and bookkeeping, with one step in flight)."""
    now = self._clock()
    if self._last is not None and self._seen >= WARMUP_STEPS:
      self._step_times.append(now - self._last - self._paused)
    self._last, self._paused = now, 0.0
    self._seen += 1

  @contextlib.contextmanager
  def paused(self, validation: bool = False):
    """Times work that is not a train step; a validation's time feeds the estimate."""
    start = self._clock()
    try:
      yield
    finally:
      took = self._clock() - start
      self._paused += took
      if validation:
        self.validation_s = took

  @property
  def step_s(self) -> float | None:
    return sum(self._step_times) / len(self._step_times) if self._step_times else None

  def remaining_s(self, steps_left: int, validations_left: int) -> float | None:
    if steps_left and self.step_s is None:
      return None
    if validations_left and self.validation_s is None:
      return None
    return steps_left * (self.step_s or 0.0) + validations_left * (self.validation_s or 0.0)


class StageBar:
  """The stage's tqdm bar on process 0 (nothing elsewhere), showing `StageClock`'s estimate.

  Args:
    name: the stage, as shown.
    start, stop: the stage's global step range [start, stop).
    done: the global step the loop starts at (a resumed run starts inside the range).
    validation_steps: global steps of this stage after which a validation runs.
    enabled: whether to draw (process 0 only).
  """

  def __init__(self, name: str, start: int, stop: int, done: int, validation_steps, enabled: bool):
    self.clock = StageClock()
    self.stop = stop
    self._validations = sorted(validation_steps)
    # A log file gets a line a minute; a terminal the usual redraws.
    interval = 0.1 if sys.stderr.isatty() else 60.0
    self._bar = tqdm(total=stop - start, initial=done - start, desc=name, disable=not enabled,
                     dynamic_ncols=True, mininterval=interval, maxinterval=max(interval, 10.0),
                     bar_format='{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} '
                                '[{elapsed}{postfix}]')
    self._scalars = {}

  def eta(self, step: int) -> float | None:
    """Seconds left after global step `step`, or None until there is a measurement."""
    left = sum(v > step for v in self._validations)
    return self.clock.remaining_s(self.stop - step, left)

  def eta_text(self, step: int) -> str:
    """The estimate as shown: '>M:SS' (the steps alone) while the validations are not timed."""
    if (eta := self.eta(step)) is not None:
      return format_seconds(eta)
    if (s := self.clock.step_s) is not None:
      return '>' + format_seconds((self.stop - step) * s)
    return '?'

  def update(self, step: int, scalars: dict | None = None) -> None:
    """Global step `step` is done; `scalars` (if any) replace the losses shown."""
    self.clock.step_done()
    if scalars:
      self._scalars = {k: f'{float(v):.4f}' for k, v in scalars.items()}
    parts = [f'eta {self.eta_text(step)}']
    if (s := self.clock.step_s) is not None:
      parts.append(f'{s:.2f}s/step')
    parts += [f'{k}={v}' for k, v in self._scalars.items()]
    self._bar.set_postfix_str(', '.join(parts), refresh=False)
    self._bar.update(1)

  def close(self) -> None:
    self._bar.close()
