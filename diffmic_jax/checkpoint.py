"""Orbax checkpoints: everything a resume needs in one save, restored into an abstract target.

Each save holds three items: `state` (both models, batch stats, optimizer states, EMA, step),
`data` (the grain iterator's position, per process) and `meta` (the config that made the run and
the validation score). Periodic saves go to `<workdir>/checkpoints` (the last few kept, for
resume); the checkpoint with the best validation score goes to `<workdir>/best`. The test split
never chooses a checkpoint.

A checkpoint from another config (other K, other backbone, other T) is refused before Orbax sees
it, with the fields that differ, instead of a shape error deep in a restore. A checkpoint damaged
on disk (a truncated or missing array file) is named, never deleted: a resume moves it to
`<workdir>/damaged/` and falls back to the newest one that restores. This is the only file that
imports Orbax.
"""

import gc
import json
import logging as logging_std
import os
import sys
import time
import traceback
import warnings
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from diffmic_jax.errors import UserError

# Fields that change parameter shapes or meaning: a checkpoint must agree on all of them.
SHAPE_FIELDS = ('num_classes', 'model.dcg_backbone', 'model.eps_backbone', 'model.small_stem',
                'model.width', 'model.feature_dim', 'model.prior_input', 'model.attention_dim',
                'diffusion.timesteps')


class ConfigMismatchError(UserError, ValueError):
  """The checkpoint was written by a run whose model does not fit this config."""


class DamagedCheckpointError(UserError, RuntimeError):
  """A checkpoint's files are on disk but do not restore."""


def _why(error: Exception) -> str:
  """The first line of a restore error, short enough for a log line or an error message."""
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0][:300] if text else ""}'


def _is_abandoned_read(unraisable) -> bool:
  """Whether an unraisable error is an Orbax read left in flight by a restore that failed.

  When one array of a restore fails, Orbax closes its event loop while TensorStore still
  completes the other reads: each then reports "Event loop is closed", or its coroutine raises
  when collected. They say nothing the restore's own error does not.
  """
  error, culprit = unraisable.exc_value, unraisable.object
  if isinstance(error, RuntimeError) and str(error) == 'Event loop is closed':
    return True
  code = getattr(culprit, 'cr_code', None)
  return code is not None and code.co_name == '_read_array_index_and_device_put'


class _AbandonedReadTasks(logging_std.Filter):
  """Drops asyncio's "... exception was never retrieved" for Orbax's abandoned reads."""

  def filter(self, record) -> bool:
    message = record.getMessage()
    if 'exception was never retrieved' not in message:
      return True
    if record.exc_info:
      message += ''.join(traceback.format_exception(*record.exc_info))
    return not any(mark in message for mark in ('orbax', 'OCDBT', 'TensorStore'))


_LOG_FILTERS = []  # Added once per process.


def _quiet_abandoned_reads() -> None:
  """Drops the reports of reads abandoned by a failed restore; others reach the previous hook.

  Installed before every restore (the reports can come before its error does); the hook is put
  back where something replaced it (test runners do, per test), the filters are added once.
  """
  if not _LOG_FILTERS:
    _LOG_FILTERS.append(_AbandonedReadTasks())
    logging_std.getLogger('asyncio').addFilter(_LOG_FILTERS[0])
    warnings.filterwarnings('ignore', r"coroutine '.*' was never awaited", RuntimeWarning)
  previous = sys.unraisablehook
  if getattr(previous, 'drops_abandoned_reads', False):
    return

  def hook(unraisable):
    if _is_abandoned_read(unraisable):
      logging.debug('dropped a report from a read abandoned by a failed restore')
    else:
      previous(unraisable)

  hook.drops_abandoned_reads = True
  sys.unraisablehook = hook


def _restore(manager, step: int, args):
  """`manager.restore`, collecting the reads a failure abandons while their reports are dropped."""
  _quiet_abandoned_reads()
  try:
    return manager.restore(step, args=args)
  except Exception:
    gc.collect()
    raise


def _get(cfg: dict, dotted: str):
  for part in dotted.split('.'):
    cfg = cfg.get(part, {}) if isinstance(cfg, dict) else {}
  return cfg if cfg != {} else None


def check_compatible(saved_config: dict, config_dict: dict, where: str) -> None:
  """Raises ConfigMismatchError naming each shape field where the two configs differ."""
  diffs = [f'{f}: checkpoint has {_get(saved_config, f)!r}, config has {_get(config_dict, f)!r}'
           for f in SHAPE_FIELDS if _get(saved_config, f) != _get(config_dict, f)]
  if diffs:
    raise ConfigMismatchError(f'checkpoint {where} was written with another model config:\n  '
                              + '\n  '.join(diffs))


def _config_dict(config) -> dict:
  return json.loads(config.to_json_best_effort())


def _manager(directory: str, max_to_keep: int, name: str,
             read_only: bool = False) -> ocp.CheckpointManager:
  # Both managers save the same step at a stage end; with several processes their barriers are
  # keyed by step, so without a prefix the second save meets the first one's barrier and hangs.
  return ocp.CheckpointManager(
      directory, item_names=('state', 'data', 'meta'),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=None if read_only else max_to_keep, create=not read_only,
          read_only=read_only, save_interval_steps=0 if read_only else 1,
          multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)))


class Checkpointer:
  """Periodic and best-on-validation checkpoints under one workdir (`read_only`: for evaluation,
  which may read a workdir it cannot write)."""

  def __init__(self, workdir: str, max_to_keep: int = 2, read_only: bool = False):
    self.workdir = workdir
    self.periodic = _manager(os.path.join(workdir, 'checkpoints'), max_to_keep, 'periodic',
                             read_only)
    self.best = _manager(os.path.join(workdir, 'best'), 1, 'best', read_only)

  def _manager(self, best: bool) -> ocp.CheckpointManager:
    return self.best if best else self.periodic

  def latest_step(self, best: bool = False) -> int | None:
    return self._manager(best).latest_step()

  def path(self, step: int, best: bool = False) -> str:
    return os.path.join(self._manager(best).directory, str(step))

  def save(self, step: int, state: Any, data_iter, config, extra: dict | None = None,
           best: bool = False) -> str:
    """Saves (asynchronously where Orbax can); every process must call it."""
    meta = {'config': _config_dict(config), 'step': int(step), **(extra or {})}
    args = {'state': ocp.args.StandardSave(state), 'meta': ocp.args.JsonSave(meta)}
    if data_iter is not None:
      args['data'] = grain.checkpoint.CheckpointSave(data_iter)
    manager = self._manager(best)
    if step in manager.all_steps():  # A resumed run re-reaches a step a killed run had saved.
      manager.delete(step)
    manager.save(step, args=ocp.args.Composite(**args), force=True)
    return self.path(step, best)

  def read_meta(self, step: int, best: bool = False) -> dict:
    restored = _restore(self._manager(best), step, ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return restored['meta']

  def restore(self, step: int, abstract_state: Any, config, data_iter=None, best: bool = False):
    """Restores `state` into `abstract_state` (shapes, dtypes, shardings) and, if given, the data
    iterator in place. Returns (state, meta)."""
    where = self.path(step, best)
    meta = self.read_meta(step, best)
    check_compatible(meta['config'], _config_dict(config), where)
    args = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      args['data'] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = _restore(self._manager(best), step, ocp.args.Composite(**args))
    return restored['state'], meta

  def restore_newest(self, abstract_state: Any, config, data_iter=None):
    """(step, state, meta) of the newest periodic checkpoint that restores; None without any.

    Each one that fails to restore is named in a warning and moved to `<workdir>/damaged/`, kept
    for inspection, so that a later save of the same step cannot delete it; a run resumed from an
    older step redoes the steps after it exactly. Raises DamagedCheckpointError when none restores.
    """
    damaged = []
    for step in sorted(self.periodic.all_steps(), reverse=True):
      try:
        state, meta = self.restore(step, abstract_state, config, data_iter)
      except UserError:
        raise
      except Exception as e:  # noqa: BLE001  (TensorStore, Orbax and JSON raise many kinds)
        logging.warning('checkpoint %s does not restore (%s); trying the one before it',
                        self.path(step), _why(e))
        damaged.append((step, e))
        continue
      self._set_aside([s for s, _ in damaged])
      return step, state, meta
    if damaged:
      raise DamagedCheckpointError(
          f'no checkpoint under {self.periodic.directory} restores: '
          + '; '.join(f'step {s}: {_why(e)}' for s, e in damaged)
          + f'; move {self.periodic.directory} aside to start afresh')
    return None

  def _set_aside(self, steps: list[int]) -> None:
    """Moves the damaged periodic checkpoints `steps` to <workdir>/damaged/<step>-<time>."""
    if not steps:
      return
    if jax.process_index() == 0:
      aside = epath.Path(self.workdir) / 'damaged'
      aside.mkdir(parents=True, exist_ok=True)
      for step in steps:
        to = aside / f'{step}-{time.strftime("%Y%m%dT%H%M%S")}'
        epath.Path(self.path(step)).rename(to)
        logging.warning('moved the damaged checkpoint of step %d to %s (kept, not deleted)', step,
                        to)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('damaged checkpoints set aside')
    self.periodic.reload()

  def damaged_message(self, step: int, best: bool, error: Exception) -> str:
    """Names a checkpoint that does not restore and the steps whose files all read."""
    readable = {name: [s for s in sorted(self._manager(b).all_steps()) if (s, b) != (step, best)
                       and self._reads(s, b)] for name, b in (('periodic', False), ('best', True))}
    listing = ', '.join(f'{name} {steps}' for name, steps in readable.items())
    return (f'checkpoint {self.path(step, best)} does not restore ({_why(error)}); readable '
            f'checkpoints: {listing}; pass --checkpoint=STEP to use one')

  def _reads(self, step: int, best: bool) -> bool:
    """Whether every array of a checkpoint restores (as saved, onto this host)."""
    try:
      _restore(self._manager(best), step, ocp.args.Composite(
          state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    except Exception:  # noqa: BLE001
      return False
    return True

  def wait(self) -> None:
    self.periodic.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.periodic.close()
    self.best.close()


def check_workdir(config, workdir: str) -> None:
  """Refuses, before anything is written, a workdir whose checkpoints another model config wrote."""
  if not (epath.Path(workdir) / 'checkpoints').exists():  # Local or gs://.
    return
  ckpt = Checkpointer(workdir, read_only=True)
  try:
    for step in sorted(ckpt.periodic.all_steps(), reverse=True):
      try:
        meta = ckpt.read_meta(step)
      except Exception:  # noqa: BLE001  A damaged one: the resume names it and falls back.
        continue
      check_compatible(meta['config'], _config_dict(config), ckpt.path(step))
      return
  finally:
    ckpt.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs with shardings: the restore target Orbax needs."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
