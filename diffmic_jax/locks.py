"""Exclusive use of a workdir or of a build: a lock file that names its holder.

Two trainings writing one workdir (a job resubmitted while the old one still runs) corrupt each
other's checkpoints, and two jobs building one source into a data_dir race on TFDS's final rename.
The lock is the kernel's `flock` on a file that names the holder (host, pid, start time): the
kernel drops it when the holder dies, however it dies, so a lock left by a killed run is simply
taken over, and its file says whose it was. Object stores (gs://) have no such lock; their
workdirs and builds are not locked.
"""

import contextlib
import errno
import fcntl
import json
import os
import socket
import time

from absl import logging

from diffmic_jax.errors import UserError

WORKDIR_LOCK = 'train.lock'


class LockedError(UserError, RuntimeError):
  """Another live process holds the lock."""


def describe(holder: dict) -> str:
  """`host h, pid p, started 2026-01-02 03:04:05 UTC` from a lock file's contents."""
  started = holder.get('started')
  when = (time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(started))
          if isinstance(started, (int, float)) else '?')
  return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started {when}"


def _read(fd: int) -> dict:
  os.lseek(fd, 0, os.SEEK_SET)
  text = os.read(fd, 4096).decode(errors='replace')
  try:
    holder = json.loads(text)
  except ValueError:
    return {}
  return holder if isinstance(holder, dict) else {}


class Lock:
  """An exclusive lock on `path` (created if absent), released by `release` or the holder's death.

  The file is removed on release. A waiter that opened the file before that removal would lock an
  unlinked inode, so every acquisition checks that the path still names the inode it locked.
  """

  def __init__(self, path: str, what: str):
    self.path, self.what = path, what
    self.fd: int | None = None
    self.previous: dict = {}  # What the file said when taken: a killed holder's record, or {}.

  def acquire(self, wait: bool = False) -> 'Lock':
    """Takes the lock; without `wait`, raises LockedError naming the live holder."""
    waited = False
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
          os.close(fd)
          raise
        holder = _read(fd)
        if not wait:
          os.close(fd)
          raise LockedError(f'{self.what} is in use by another process ({describe(holder)}; lock '
                            f'file {self.path}): wait for it to end or stop it') from None
        if not waited:
          logging.warning('waiting for %s, in use by %s', self.what, describe(holder))
          waited = True
        fcntl.flock(fd, fcntl.LOCK_EX)
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)  # Released and removed by its holder meanwhile: lock the new file.
    self.fd, self.previous = fd, _read(fd)
    if self.previous and not waited:
      logging.warning('taking over %s from a process that ended without releasing it (%s)',
                      self.what, describe(self.previous))
    record = {'host': socket.gethostname(), 'pid': os.getpid(), 'started': time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    os.fsync(fd)
    return self

  def release(self) -> None:
    if self.fd is None:
      return
    with contextlib.suppress(FileNotFoundError):
      os.unlink(self.path)  # Unlinked before unlocking: a waiter then retries on a new file.
    os.close(self.fd)
    self.fd = None


def _is_remote(path: str) -> bool:
  return '://' in path


@contextlib.contextmanager
def workdir_lock(workdir: str):
  """Holds `<workdir>/train.lock` for a training run; refuses a workdir another run is using.

  A workdir this creates is removed again if the run fails before writing anything else into it,
  so a refused run leaves nothing behind.
  """
  if _is_remote(workdir):
    yield None
    return
  created = not os.path.exists(workdir)
  os.makedirs(workdir, exist_ok=True)
  lock = Lock(os.path.join(workdir, WORKDIR_LOCK), f'workdir {workdir}')
  try:
    lock.acquire()
  except BaseException:
    if created:
      with contextlib.suppress(OSError):
        os.rmdir(workdir)
    raise
  try:
    yield lock
  except BaseException:
    lock.release()
    if created:
      with contextlib.suppress(OSError):
        os.rmdir(workdir)  # Only if empty: a run that wrote something keeps it.
    raise
  lock.release()


@contextlib.contextmanager
def build_lock(data_dir: str, source_id: str):
  """Holds `<data_dir>/<source_id>.build.lock` while a source is built; waits for another build."""
  if _is_remote(data_dir):
    yield None
    return
  os.makedirs(data_dir, exist_ok=True)
  lock = Lock(os.path.join(data_dir, f'{source_id}.build.lock'),
              f'the build of {source_id} in {data_dir}')
  lock.acquire(wait=True)
  try:
    yield lock
  finally:
    lock.release()
