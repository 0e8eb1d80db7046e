"""Training and evaluation scalars as JSON lines and TensorBoard events, from process 0 only.

Validation also writes a few images (its confusion matrix, saliency overlays) to TensorBoard.

JSON lines are what scripts and tests read back (`metrics.jsonl`, one object per logged step);
TensorBoard is what a person opens. Other processes get a writer that writes nothing, so callers
never branch on the process index.

The workdir may be local or any `etils.epath` URL (gs://, s3://). A local file is appended line
by line, so a killed run keeps every line it wrote and a rewrite can never lose earlier lines. An
object store cannot append, but it replaces a whole object atomically: there the writer reads back
the existing lines once (a resumed run keeps them), keeps all lines in memory and rewrites
metrics.jsonl at most every `flush_secs` and on close. TensorBoard events go to a local temporary
folder and are copied to <workdir>/tensorboard on the same schedule; tensorboardX's own gs://
writer needs google-cloud-storage and knows no other scheme, while a copy works for every scheme.

A run resumed from the checkpoint of step s (`resumed_step`) logs steps after s again, so the
writer first drops every line after step s (and TensorBoard hides its events after s): each step
appears once, as the uninterrupted run would have written it.
"""

import json
import os
import shutil
import tempfile
import time

import jax
import numpy as np
from etils import epath

from diffmic_jax.data import staging


def _upto(lines: list[str], step: int) -> list[str]:
  """The lines of steps <= `step`; a line cut short by a kill is dropped too."""
  keep = []
  for line in lines:
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if row['step'] <= step:
      keep.append(line if line.endswith('\n') else line + '\n')
  return keep


class MetricWriter:
  """Appends scalars to <workdir>/metrics.jsonl and TensorBoard; `resumed_step` as above."""

  def __init__(self, workdir, enabled: bool | None = None, flush_secs: float = 30.0,
               resumed_step: int | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = self._tb = self._tb_local = None
    self._flush_secs, self._last_flush = flush_secs, time.monotonic()
    self._local = not staging.is_remote(workdir)
    if not self.enabled:
      return
    self._dir = epath.Path(workdir)
    self._dir.mkdir(parents=True, exist_ok=True)
    self._path = self._dir / 'metrics.jsonl'
    lines = self._path.read_text().splitlines(keepends=True) if self._path.exists() else []
    if resumed_step is not None and (kept := _upto(lines, resumed_step)) != lines:
      lines = kept
      # Replaced whole (an object store does so atomically): a kill now loses no line.
      tmp = self._dir / 'metrics.jsonl.tmp' if self._local else self._path
      tmp.write_text(''.join(lines))
      if self._local:
        tmp.replace(self._path)
    if self._local:
      self._jsonl = open(self._path, 'a', buffering=1)
    else:
      self._lines = lines
    try:
      from tensorboardX import SummaryWriter
    except ImportError:  # TensorBoard files are a convenience; JSON lines always exist.
      return
    purge = None if resumed_step is None else resumed_step + 1
    if self._local:
      self._tb = SummaryWriter(str(self._dir / 'tensorboard'), purge_step=purge)
    else:
      self._tb_local = tempfile.mkdtemp(prefix='diffmic_tb_')
      self._tb = SummaryWriter(self._tb_local, purge_step=purge)

  def write(self, step: int, scalars: dict, prefix: str = '') -> None:
    if not self.enabled:
      return
    clean = {f'{prefix}{k}': float(np.asarray(v)) for k, v in scalars.items()
             if np.ndim(v) == 0 and np.issubdtype(np.asarray(v).dtype, np.number)}
    line = json.dumps({'step': int(step), 'time': time.time(), **clean}) + '\n'
    if self._tb is not None:
      for k, v in clean.items():
        self._tb.add_scalar(k, v, int(step))
    if self._local:
      self._jsonl.write(line)
      return
    self._lines.append(line)
    if time.monotonic() - self._last_flush >= self._flush_secs:
      self.flush()

  def write_images(self, step: int, images: dict, prefix: str = '') -> None:
    """uint8 (H, W, 3) images to TensorBoard (JSON lines hold only scalars)."""
    if not self.enabled or self._tb is None:
      return
    for k, image in images.items():
      self._tb.add_image(f'{prefix}{k}', np.asarray(image, np.uint8), int(step), dataformats='HWC')

  def flush(self) -> None:
    """Makes everything written so far visible in the workdir."""
    if not self.enabled:
      return
    if self._local:
      self._jsonl.flush()
      if self._tb is not None:
        self._tb.flush()
      return
    self._path.write_text(''.join(self._lines))
    if self._tb is not None:
      self._tb.flush()
      remote = self._dir / 'tensorboard'
      remote.mkdir(parents=True, exist_ok=True)
      for name in os.listdir(self._tb_local):  # tensorboardX names each run's file uniquely.
        with open(os.path.join(self._tb_local, name), 'rb') as f:
          (remote / name).write_bytes(f.read())
    self._last_flush = time.monotonic()

  def close(self) -> None:
    if not self.enabled:
      return
    if self._local:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()
      return
    self.flush()
    if self._tb is not None:
      self._tb.close()
    if self._tb_local is not None:
      shutil.rmtree(self._tb_local, ignore_errors=True)
