"""Clean stops: SIGTERM or SIGINT ends a run at a step boundary that every process agrees on.

A preempted Cloud TPU VM or a cluster scheduler sends SIGTERM, then SIGKILL after a grace period;
Ctrl-C sends SIGINT. A handler here only records the signal; the training loop asks `StepBoundary`
at each step boundary whether to stop (and whether a time-based checkpoint is due), saves a
checkpoint there and raises `Stopped`, which exits with 128 + the signal number (143 for SIGTERM,
130 for SIGINT), as a shell reports a process killed by that signal. A second Ctrl-C aborts at once.

With several processes, Orbax saves are collective, so every process must save at the same step,
yet a signal may reach only some of them and their clocks differ. Each boundary's flags therefore
go through a max over all devices, and the result is read at the next boundary, while the next step
is already queued: all processes act on the same flags one step later, without stalling the queue.

A single process also asks inside a long validation or the final evaluation (`stop_now`), so a
preemption's grace period is not spent finishing them: an interrupted validation is redone first
thing on resume, an interrupted final evaluation is redone whole.
"""

import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffmic_jax import parallel

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(SystemExit):
  """The run stopped on a signal after saving a checkpoint; exits with 128 + the signal number."""

  def __init__(self, signum: int, step: int, path: str, during: str = ''):
    super().__init__(128 + signum)
    self.signum, self.step, self.path, self.during = signum, step, path, during

  def __str__(self) -> str:
    during = f' during {self.during}' if self.during else ''
    return (f'stopped by {signal.Signals(self.signum).name}{during} after step {self.step}; '
            f'checkpoint: {self.path}; run the same command with the same --workdir to resume')


class Interrupted(Exception):
  """A stop signal ended a validation or evaluation loop part-way; nothing of it was kept."""

  def __init__(self, signum: int):
    super().__init__(f'interrupted by {signal.Signals(signum).name}')
    self.signum = signum


class StepBoundary:
  """Signal handlers plus the per-step decisions: stop now? save now because time has passed?

  Use as a context manager around the training loop: the handlers are installed on entry and the
  previous ones restored on exit, so a signal outside the loop (final evaluation) acts as usual.

  Args:
    mesh: the ('data',) mesh; with several processes the decisions are reduced over it.
    save_every_s: seconds between time-based checkpoints (None: never by time).
    agree: reduce the decisions over all processes, one step late (default: when there are
      several processes).
  """

  def __init__(self, mesh, save_every_s: float | None, agree: bool | None = None):
    self.save_every_s = save_every_s
    self.agree = jax.process_count() > 1 if agree is None else agree
    self.signum = 0  # The first signal received by this process; 0 for none.
    self._last_save = time.monotonic()
    self._saves = 0
    self._previous = {}
    self._pending = None  # (the reduction dispatched last boundary, saves done before it)
    if self.agree:
      rows = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
      self._rows, self._mesh = rows, mesh
      self._max = jax.jit(lambda x: jnp.max(x, axis=0), out_shardings=parallel.replicated(mesh))

  def __enter__(self):
    for s in SIGNALS:
      try:
        self._previous[s] = signal.signal(s, self._handle)
      except ValueError:  # Not the main thread: signals keep their usual effect.
        break
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}
    return False

  def _handle(self, signum, frame):
    if signum == signal.SIGINT and self.signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)
      raise KeyboardInterrupt
    if not self.signum:
      self.signum = signum
      extra = ' (Ctrl-C again to abort without saving)' if signum == signal.SIGINT else ''
      os.write(2, f'\n{signal.Signals(signum).name}: saving a checkpoint after this step{extra}\n'
               .encode())

  def stop_now(self) -> int:
    """The signal received so far (0: none), for loops inside a step boundary (validation): only
    with one process, where no other process has to agree."""
    return 0 if self.agree else self.signum

  def saved(self) -> None:
    """Restarts the time-based checkpoint clock; call on every process after each save."""
    self._last_save = time.monotonic()
    self._saves += 1

  def poll(self) -> tuple[int, bool]:
    """(signal to stop on, 0 for none; whether a time-based save is due), at a step boundary.

    Call once per step, after the step is dispatched and before any save, on every process; with
    `agree`, the answer is the maximum over processes of what they saw one boundary earlier.
    """
    due = self.save_every_s is not None and time.monotonic() - self._last_save >= self.save_every_s
    local = np.array([self.signum, int(due)], np.int32)
    if not self.agree:
      return int(local[0]), bool(local[1])
    previous = self._pending
    rows = np.broadcast_to(local, (self._rows, 2))
    self._pending = (self._max(jax.make_array_from_process_local_data(
        parallel.batch_sharded(self._mesh), rows)), self._saves)
    if previous is None:
      return 0, False
    signum, due = np.asarray(previous[0])
    # A save since those flags were taken already served any time-based request among them.
    return int(signum), bool(due) and previous[1] == self._saves
