"""The training loop: DCG pre-training, then joint training, with validation-chosen checkpoints.

    stage 1  steps [0, P)        dcg_pretrain_step   (P = dcg_pretrain_epochs x steps_per_epoch)
    stage 2  steps [P, P + J)    joint_step          (J = epochs x steps_per_epoch)

The whole run (state + data iterator position) is saved at each stage end, every
`checkpoint_every_minutes`, every `checkpoint_every_steps` if set, and when SIGTERM or SIGINT asks
the run to stop (preemption.py). A killed or stopped run resumes from the last save with the same
batches and the same keys (both derive from the step), so it reproduces an uninterrupted run. The
validation split, never the test split, picks the best checkpoint; the test split is evaluated
once, at the end, from that checkpoint.
"""

import dataclasses
import functools
import sys
from typing import Any

import jax
import numpy as np
from absl import logging

from diffmic_jax import (checkpoint, data, host_memory, parallel, preemption, pretrained, progress,
                         train_state)
from diffmic_jax.errors import UserError
from diffmic_jax.evaluate import Validator, evaluate_splits
from diffmic_jax.metric_writer import MetricWriter
from diffmic_jax.train_steps import dcg_pretrain_step, dcg_statistics_pass, joint_step


class NonFiniteLossError(FloatingPointError):
  """A training loss became NaN or infinite."""


def partial_last_batch(config) -> bool:
  """Whether epochs end with a smaller batch, as the official DataLoader's (`drop_last=False`):
  with one process and train.steps_per_epoch unset. Several processes' shards differ in size, so
  there each epoch is whole batches only."""
  fixed = config.train.steps_per_epoch
  return (fixed is None or fixed <= 0) and jax.process_count() == 1


def batches_per_epoch(n: int, batch_size: int, partial_last: bool) -> int:
  """ceil(n / B) with the partial last batch, else whole batches only."""
  return -(-n // batch_size) if partial_last else n // batch_size


def steps_per_epoch(config) -> int:
  """config.train.steps_per_epoch if set, else batches per pass over the train split: ceil(n / B)
  with the partial last batch (one process), whole batches otherwise."""
  if (fixed := config.train.steps_per_epoch) is not None and fixed > 0:
    return fixed
  n, b = data.num_examples(config.data, config.data.train_split), config.train.batch_size
  if n < b:
    raise UserError(f'train split has {n} examples, fewer than one batch of '
                    f'{b}: lower train.batch_size or add images')
  return batches_per_epoch(n, b, partial_last_batch(config))


_PASS_SEED = 7919  # Offsets the passes' shuffle from the training iterator's seeds.


def official_dcg_passes(config, models: train_state.Models, mesh, state, splits):
  """`train.official_dcg_passes`: the DCG's BatchNorm statistics moved by train-mode passes over
  `splits` in order, batches of train.batch_size, no weight updated.

  The train split is read as the official shuffled loader reads it: one augmented epoch with its
  partial last batch, from its own seed, so the training batches that follow are unchanged; other
  splits in order, without padding. Returns the new state.
  """
  if jax.process_count() > 1:
    raise UserError('train.official_dcg_passes runs with one process only')
  fn = jax.jit(functools.partial(dcg_statistics_pass, models))
  b = config.train.batch_size
  for split in splits:
    if split == config.data.train_split:
      n = data.num_examples(config.data, split)
      it = data.make_train_iterator(config.data, image_size=config.image_size, global_batch_size=b,
                                    seed=config.seed + _PASS_SEED, partial_last_batch=True)
      batches = (next(it) for _ in range(batches_per_epoch(n, b, True)))
    else:
      batches = ({'image': x['image'][x['mask']]} for x in data.make_eval_iterator(
          config.data, split, image_size=config.image_size, global_batch_size=b))
    for local in batches:
      stats = fn(state.dcg, parallel.global_batch({'image': local['image']}, mesh, replicate=True))
      state = state.replace(dcg=state.dcg.replace(batch_stats=stats))
  return state


def initial_state(config, models: train_state.Models, mesh):
  """Random init, then any converted ImageNet weights; replicated over the mesh."""
  state = jax.jit(functools.partial(train_state.init_state, models, image_size=config.image_size))(
      train_state.keys(config.seed)['init'])
  if config.model.pretrained or config.model.eps_pretrained:
    dcg_vars, eps_vars = state.dcg.variables(), state.eps.variables()
    if config.model.pretrained:
      src = pretrained.load_variables(config.model.pretrained)
      dcg_vars, r1 = pretrained.init_from_pretrained(dcg_vars, src, ('global_net',), config.model.pretrained)
      dcg_vars, r2 = pretrained.init_from_pretrained(dcg_vars, src, ('local_net',), config.model.pretrained)
      logging.info('DCG weights:\n%s', r1.merge(r2).summary())
    if config.model.eps_pretrained:
      eps_vars, r3 = pretrained.init_from_pretrained(eps_vars, config.model.eps_pretrained, ('encoder',))
      logging.info('epsilon-network encoder weights:\n%s', r3.summary())
    state = train_state.state_from_variables(models, dcg_vars, eps_vars)
  return jax.device_put(state, parallel.replicated(mesh))


def xla_options() -> dict:
  """On CPU, XLA's memory-optimised instruction scheduler (used when `config.cpu_tuning` is set).

  The CPU default, the concurrency-optimised scheduler, runs the backward pass's
  gradient-independent work during the forward pass, which keeps its buffers alive until the
  backward pass: more temporary memory for no speed. Other backends get no options.
  """
  if jax.default_backend() == 'cpu':
    return {'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'}
  return {}


def compiled_steps(models, mesh, cpu_tuning: bool = False, replicated_batch: bool = False):
  """The two train steps, jitted once: state replicated and donated, batch sharded on 'data'.

  `replicated_batch`: the batch replicated instead, for an epoch's partial last batch, whose size
  need not divide over the devices: each device computes the whole (small) batch, which keeps the
  torch semantics exactly (no padding, no masks).
  """
  rep = parallel.replicated(mesh)
  shard = rep if replicated_batch else parallel.batch_sharded(mesh)
  options = xla_options() if cpu_tuning else {}
  pretrain = jax.jit(functools.partial(dcg_pretrain_step, models), donate_argnums=0,
                     in_shardings=(rep, shard), out_shardings=(rep, rep), compiler_options=options)
  joint = jax.jit(functools.partial(joint_step, models), donate_argnums=0,
                  in_shardings=(rep, shard, rep), out_shardings=(rep, rep), compiler_options=options)
  return pretrain, joint


def _check_finite(step: int, metrics: dict, ckpt: checkpoint.Checkpointer) -> None:
  """Stops the run on a non-finite loss, naming the step and the last good checkpoint.

  Checkpoint k holds the parameters that produced loss k, so the good ones are those before
  `step`; any at or after it hold the diverged parameters and are named so nobody resumes them.
  """
  loss = float(metrics.get('loss', metrics['dcg_ce']))
  if np.isfinite(loss):
    return
  ckpt.wait()
  steps = ckpt.periodic.all_steps()
  good = [s for s in steps if s < step]
  bad = [s for s in steps if s >= step]
  where = ckpt.path(max(good)) if good else 'none (no checkpoint was saved before it)'
  msg = f'non-finite training loss {loss} at step {step}; last good checkpoint: {where}'
  if bad:
    msg += f'; checkpoints {bad} hold the diverged parameters: delete them before resuming'
  raise NonFiniteLossError(msg)


@dataclasses.dataclass
class _Run:
  """What the stages share. `state`, `step`, `best`, `pending` and `saved_step` change as it runs."""
  config: Any
  workdir: str
  mesh: Any
  models: train_state.Models
  spe: int
  pre_steps: int
  total: int
  train_iter: Any
  ckpt: checkpoint.Checkpointer
  tuned: bool
  state: Any = None
  step: int = 0
  best: dict | None = None
  pending: tuple | None = None  # (step, metrics) of the last step, not yet checked for NaN.
  saved_step: int | None = None
  unvalidated: bool = False  # The restored step's validation was interrupted: redo it first.
  writer: MetricWriter | None = None
  validator: Any = None
  pretrain: Any = None
  joint: Any = None
  partial_steps: Any = None  # (pretrain, joint) for an epoch's partial last batch.
  boundary: preemption.StepBoundary | None = None


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains per `config`, resuming from `workdir` if it holds a checkpoint; returns final results.

  SIGTERM or SIGINT during training stops the run after the current step with a checkpoint, by
  raising preemption.Stopped (a SystemExit: exit code 128 + the signal number).
  """
  run = _set_up(config, workdir)
  try:
    with run.boundary:
      if run.unvalidated and not _validate(run, run.step):
        raise preemption.Stopped(run.boundary.signum, run.step, run.ckpt.path(run.step))
      if run.config.train.official_dcg_passes and run.step == 0:
        run.state = official_dcg_passes(run.config, run.models, run.mesh, run.state,
                                        (run.config.data.val_split,))
      _stage_1_pretrain_dcg(run)
      _stage_2_joint(run)
    # A single process signalled after its last step boundary has its final checkpoint already.
    if run.boundary.signum and not run.boundary.agree:
      raise preemption.Stopped(run.boundary.signum, run.step, run.ckpt.path(run.step))
  except preemption.Stopped as stop:
    _close(run)
    if jax.process_index() == 0:
      print(stop, file=sys.stderr, flush=True)
    raise
  return _final_evaluation(run)


def _set_up(config, workdir: str) -> _Run:
  """Mesh, models, data, compiled steps and the state: fresh, or the last checkpoint's.

  The restored data iterator reads, from the restored step on, the batches the uninterrupted run
  read; metrics.jsonl loses its rows after that step, which the run is about to log again.
  """
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.train.batch_size, mesh)
  spe = steps_per_epoch(config)
  pre_steps = config.train.dcg_pretrain_epochs * spe
  run = _Run(config, workdir, mesh, train_state.build_models(config, spe), spe, pre_steps,
             total=pre_steps + config.train.epochs * spe, tuned=train_state.cpu_tuned(config),
             train_iter=data.make_train_iterator(
                 config.data, image_size=config.image_size,
                 global_batch_size=config.train.batch_size, seed=config.seed,
                 process_index=jax.process_index(), process_count=jax.process_count(),
                 partial_last_batch=partial_last_batch(config)),
             ckpt=checkpoint.Checkpointer(workdir, config.train.max_to_keep))
  _restore_or_init(run)
  run.writer = MetricWriter(workdir, resumed_step=run.step)
  run.validator = Validator(config, run.models, mesh)
  run.pretrain, run.joint = compiled_steps(run.models, mesh, run.tuned)
  run.partial_steps = compiled_steps(run.models, mesh, run.tuned, replicated_batch=True)
  minutes = config.train.checkpoint_every_minutes
  run.boundary = preemption.StepBoundary(mesh, None if minutes is None else 60.0 * minutes)
  logging.info('%d steps per epoch; stage 1: %d steps, stage 2: %d steps; %d devices, %d processes',
               spe, pre_steps, run.total - pre_steps, mesh.devices.size, jax.process_count())
  _release(run)  # What the state's initialisation freed.
  return run


def _restore_or_init(run: _Run) -> None:
  """The initial state, or the last periodic checkpoint's state, data position and best score."""
  state = initial_state(run.config, run.models, run.mesh)
  run.best = {'score': -np.inf, 'step': None}
  if run.ckpt.latest_step() is not None:
    target = checkpoint.abstract_like(state)
    del state  # Freed before the restore allocates: two states never share memory.
    # The newest checkpoint that restores: one damaged on disk is named and set aside.
    last, state, meta = run.ckpt.restore_newest(target, run.config, run.train_iter)
    run.best = meta.get('best', run.best)
    run.unvalidated = bool(meta.get('unvalidated'))
    run.saved_step = last
    logging.info('resumed from %s at step %d', run.ckpt.path(last), int(state.step))
  run.state, run.step = state, int(state.step)


def _stage_1_pretrain_dcg(run: _Run) -> None:
  """Stage 1: the DCG alone, on cross-entropy, so that the priors guiding the diffusion carry
  class information before the epsilon network starts learning from them."""
  _train(run, 'stage 1 (DCG)', 0, run.pre_steps,
         lambda state, batch, step, partial: (run.partial_steps[0] if partial else run.pretrain)(
             state, batch))


def _stage_2_joint(run: _Run) -> None:
  """Stage 2: epsilon network and DCG together. Each step's key is fold_in(train key, step), so
  a resumed run draws the noise and timesteps an uninterrupted run drew."""
  key = train_state.keys(run.config.seed)['train']
  if run.config.train.official_dcg_passes and run.step == run.pre_steps:
    run.state = official_dcg_passes(run.config, run.models, run.mesh, run.state,
                                    (run.config.data.train_split, run.config.data.val_split))
    logging.info('DCG running statistics: train-mode passes over %s and %s',
                 run.config.data.train_split, run.config.data.val_split)
  if run.config.model.eps_init == 'dcg' and run.step == run.pre_steps:
    run.state = train_state.eps_encoder_from_dcg(run.state)
    logging.info('epsilon-network encoder: a copy of the trained DCG global trunk')
  _train(run, 'stage 2 (joint)', run.pre_steps, run.total,
         lambda state, batch, step, partial: (run.partial_steps[1] if partial else run.joint)(
             state, batch, jax.random.fold_in(key, step)))


def _train(run: _Run, name: str, start: int, stop: int, step_fn) -> None:
  """Steps [max(run.step, start), stop) of one stage, each followed by `_after_step`."""
  if run.step >= stop:
    return
  validations = [s for s in range(max(run.step, start) + 1, stop + 1) if _validates(run, s)]
  bar = progress.StageBar(name, start, stop, max(run.step, start), validations,
                          enabled=jax.process_index() == 0)
  first = run.step
  try:
    while run.step < stop:
      local = next(run.train_iter)
      partial = len(local['label']) * jax.process_count() != run.config.train.batch_size
      batch = parallel.global_batch(local, run.mesh, replicate=partial)
      # With CPU tuning a step is dispatched only once the previous one is done: on the CPU,
      # steps that overlap each allocate fresh memory. Accelerators keep one step queued.
      if run.tuned:
        _check_pending(run)
      run.state, metrics = step_fn(run.state, batch, run.step, partial)
      _check_pending(run)  # The previous step, checked while this one runs.
      if run.tuned and run.step == first:  # This step compiled the stage's program.
        jax.block_until_ready(metrics)
        _release(run)
      run.pending = (run.step, metrics)
      run.step += 1
      _after_step(run, metrics, bar, stop)
  finally:
    bar.close()


def _after_step(run: _Run, metrics: dict, bar: progress.StageBar, stop: int) -> None:
  """Logs, validates and saves after step `run.step`; stops here on an agreed signal."""
  step, cfg = run.step, run.config.train
  signum, time_due = run.boundary.poll()  # Every process, every step: it may reduce over them.
  shown = None
  if step % cfg.log_every_steps == 0 or step == run.total:
    host = jax.device_get(metrics)
    run.writer.write(step, host, prefix='train/')
    shown = {k: v for k, v in host.items() if k in ('loss', 'dcg_ce')}
  if _validates(run, step):
    with bar.clock.paused(validation=True):
      if not _validate(run, step):  # A stop signal ended it: save, marked for a redo on resume.
        with bar.clock.paused():
          _save(run, unvalidated=True)
        bar.update(step, shown)
        raise preemption.Stopped(run.boundary.signum, step, run.ckpt.path(step))
  every = cfg.checkpoint_every_steps
  if step == stop or time_due or signum or (every and step % every == 0):
    with bar.clock.paused():
      _save(run)
  bar.update(step, shown)
  if signum:
    raise preemption.Stopped(signum, step, run.ckpt.path(step))


def _validates(run: _Run, step: int) -> bool:
  return validates(step, run.pre_steps, run.total, run.spe, run.config.train.eval_every_epochs)


def validates(step: int, pre_steps: int, total: int, spe: int, every: int) -> bool:
  """Validation after `step`: at both stage ends and, as the official trainer's `epoch %
  validation_freq == 0` on its 0-based epochs, after joint epochs 1, 1 + every, 1 + 2 every, ..."""
  if step in (pre_steps, total):
    return True
  epoch, rest = divmod(step - pre_steps, spe)
  return step > pre_steps and rest == 0 and (epoch - 1) % every == 0


def _validate(run: _Run, step: int) -> bool:
  """Scores the validation split; a better score saves the best checkpoint. False if a stop
  signal ended it part-way (one process only: several must finish it together).

  Stage 1 is ranked by the DCG's metric, stage 2 by the diffusion's; stage-1 checkpoints compete
  only until the first joint validation replaces them.
  """
  _check_pending(run)
  try:
    scores = run.validator(run.state, joint=step > run.pre_steps, stop=run.boundary.stop_now)
  except preemption.Interrupted:
    return False
  _release(run)
  run.writer.write(step, scores, prefix='val/')
  run.writer.write_images(step, run.validator.images, prefix='val/')
  logging.info('step %d validation (%s): %s', step, run.config.data.val_split,
               ', '.join(f'{k} {float(v):.3f}' for k, v in scores.items()))
  metric = run.config.train.select_metric
  key = metric if step > run.pre_steps else f'dcg_{metric}'
  if step > run.pre_steps and (run.best['step'] is None or run.best['step'] <= run.pre_steps):
    run.best = {'score': -np.inf, 'step': None}
  if scores[key] > run.best['score']:
    run.best = {'score': float(scores[key]), 'step': step, 'metric': key}
    run.ckpt.save(step, run.state, None, run.config, {'best': run.best, 'val': scores}, best=True)
  return True


def _save(run: _Run, unvalidated: bool = False) -> None:
  """Saves the whole run at `run.step`, once per step; every process takes part."""
  if run.saved_step == run.step:
    return
  _check_pending(run)
  run.writer.flush()  # The metrics on disk reach at least as far as the checkpoint.
  extra = {'best': run.best, **({'unvalidated': True} if unvalidated else {})}
  run.ckpt.save(run.step, run.state, run.train_iter, run.config, extra)
  run.saved_step = run.step
  run.boundary.saved()


def _check_pending(run: _Run) -> None:
  if run.pending is not None:
    _check_finite(*run.pending, run.ckpt)
    run.pending = None


def _release(run: _Run) -> None:
  """With CPU tuning, hands what the phase just ended freed back to the kernel (host_memory.py)."""
  if run.tuned:
    host_memory.release_freed_memory()


def _close(run: _Run) -> None:
  """Waits for the saves in flight and closes the metric files."""
  run.ckpt.wait()
  run.writer.close()
  run.ckpt.close()


def _final_evaluation(run: _Run) -> dict:
  """Evaluates config.eval.splits with the validation-chosen checkpoint (else the last state).

  The training state is freed before that checkpoint is restored, so two states never share memory.
  """
  run.ckpt.wait()
  run.writer.close()
  if run.best['step'] is None:
    logging.info('training done; no validation ran')
  else:
    logging.info('training done; best validation %s %.3f at step %d', run.best['metric'],
                 run.best['score'], run.best['step'])
  config, state, run.state = run.config, run.state, None
  if (best_step := run.ckpt.latest_step(best=True)) is not None:
    target = checkpoint.abstract_like(state)
    del state
    state, meta = run.ckpt.restore(best_step, target, config, best=True)
    chosen = (f"checkpoint of step {best_step}, best {meta['best']['metric']} on "
              f"'{config.data.val_split}'")
    _release(run)
  else:
    chosen = f'last state, step {int(state.step)} (no validation checkpoint)'
  step = best_step if best_step is not None else int(state.step)
  if jax.process_count() > 1:  # A signal keeps its usual effect: processes cannot stop apart.
    results = evaluate_splits(config, run.workdir, run.models, run.mesh, state, chosen, step)
  else:
    with preemption.StepBoundary(run.mesh, None, agree=False) as stopper:
      try:
        results = evaluate_splits(config, run.workdir, run.models, run.mesh, state, chosen, step,
                                  stop=stopper.stop_now)
      except preemption.Interrupted as e:
        run.ckpt.close()
        stop = preemption.Stopped(e.signum, run.step, run.ckpt.path(run.step),
                                  during='the final evaluation, redone on resume')
        print(stop, file=sys.stderr, flush=True)
        raise stop from None
  run.ckpt.close()
  return results
