"""Training and evaluation scalars as JSON lines and TensorBoard events, from process 0 only.

JSON lines are what scripts and tests read back (`metrics.jsonl`, one object per logged step);
TensorBoard is what a person opens. Other processes get a writer that writes nothing, so callers
never branch on the process index.
"""

import json
import os
import time

import jax
import numpy as np


class MetricWriter:

  def __init__(self, workdir: str, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a', buffering=1)
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))
      except ImportError:  # TensorBoard files are a convenience; JSON lines always exist.
        self._tb = None

  def write(self, step: int, scalars: dict, prefix: str = '') -> None:
    if not self.enabled:
      return
    clean = {f'{prefix}{k}': float(np.asarray(v)) for k, v in scalars.items()
             if np.ndim(v) == 0 and np.issubdtype(np.asarray(v).dtype, np.number)}
    self._jsonl.write(json.dumps({'step': int(step), 'time': time.time(), **clean}) + '\n')
    if self._tb is not None:
      for k, v in clean.items():
        self._tb.add_scalar(k, v, int(step))

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
