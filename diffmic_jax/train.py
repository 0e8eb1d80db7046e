"""The training loop: DCG pre-training, then joint training, with validation-chosen checkpoints.

    stage 1  steps [0, P)        dcg_pretrain_step   (P = dcg_pretrain_epochs x steps_per_epoch)
    stage 2  steps [P, P + J)    joint_step          (J = epochs x steps_per_epoch)

Every `checkpoint_every_steps` the whole run (state + data iterator position) is saved; a killed
run resumes from the last save with the same batches and the same keys (both derive from the
step), so it reproduces an uninterrupted run. The validation split, never the test split, picks
the best checkpoint; the test split is evaluated once, at the end, from that checkpoint.
"""

import functools
import os
import signal

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from diffmic_jax import checkpoint, data, host_memory, parallel, pretrained, train_state
from diffmic_jax.evaluate import Validator, evaluate_splits
from diffmic_jax.metric_writer import MetricWriter
from diffmic_jax.train_steps import dcg_pretrain_step, joint_step


# Fault injection for the resume test: the process SIGKILLs itself after this many steps.
FAULT_ENV = 'DIFFMIC_FAULT_KILL_AT_STEP'


class NonFiniteLossError(FloatingPointError):
  """A training loss became NaN or infinite."""


@functools.lru_cache(maxsize=None)
def _keys(seed: int):
  root = jax.random.key(seed)
  return {name: jax.random.fold_in(root, i) for i, name in enumerate(('init', 'train', 'eval'))}


def steps_per_epoch(config) -> int:
  if config.train.steps_per_epoch > 0:
    return config.train.steps_per_epoch
  n = data.num_examples(config.data, config.data.train_split)
  if n < config.train.batch_size:
    raise ValueError(f'train split has {n} examples, fewer than one batch of {config.train.batch_size}')
  return n // config.train.batch_size


def initial_state(config, models: train_state.Models, mesh):
  """Random init, then any converted ImageNet weights; replicated over the mesh."""
  state = jax.jit(functools.partial(train_state.init_state, models, image_size=config.image_size))(
      _keys(config.seed)['init'])
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
  """XLA options for the train steps: on CPU, the memory-optimised instruction scheduler.

  XLA's CPU default, the concurrency-optimised scheduler, starts work as soon as its inputs exist.
  In a train step that means the backward pass's gradient-independent work (BatchNorm's x_hat) runs
  during the forward pass and stays alive until the backward pass, and the DCG update's forward
  pass runs beside the epsilon network's backward pass. On the ResNet50 joint step at 224 px that
  doubled XLA's temporaries (6.1 GB against 2.7 GB) and bought no speed (README, Benchmarks >
  Memory). Other backends have their own schedulers and get no options.
  """
  if jax.default_backend() == 'cpu':
    return {'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'}
  return {}


def compiled_steps(models, mesh):
  """The two train steps, jitted once: state replicated and donated, batch sharded on 'data'."""
  rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  options = xla_options()
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


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains per `config`, resuming from `workdir` if it holds a checkpoint; returns final results."""
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.train.batch_size, mesh)
  spe = steps_per_epoch(config)
  models = train_state.build_models(config, spe)
  pre_steps = config.train.dcg_pretrain_epochs * spe
  total = pre_steps + config.train.epochs * spe
  train_iter = data.make_train_iterator(
      config.data, image_size=config.image_size, global_batch_size=config.train.batch_size,
      seed=config.seed, process_index=jax.process_index(), process_count=jax.process_count())
  ckpt = checkpoint.Checkpointer(workdir, config.train.max_to_keep)
  state = initial_state(config, models, mesh)
  best = {'score': -np.inf, 'step': None}
  if (last := ckpt.latest_step()) is not None:
    target = checkpoint.abstract_like(state)
    del state  # Freed before the restore allocates: two states never share memory.
    state, meta = ckpt.restore(last, target, config, train_iter)
    best = meta.get('best', best)
    logging.info('resumed from %s at step %d', ckpt.path(last), int(state.step))
  writer = MetricWriter(workdir)
  validator = Validator(config, models, mesh)
  pretrain, joint = compiled_steps(models, mesh)
  train_key = _keys(config.seed)['train']
  logging.info('%d steps per epoch; stage 1: %d steps, stage 2: %d steps; %d devices, %d processes',
               spe, pre_steps, total - pre_steps, mesh.devices.size, jax.process_count())

  step = int(state.step)
  # Where the run changes phase, the pages of what the last phase freed go back to the kernel
  # (host_memory.py): here the state's initialisation, below each stage's compilation and each
  # validation. Between steady-state steps glibc keeps them, which is what makes the steps fast.
  host_memory.release_freed_memory()
  first_step = step
  bar = tqdm(total=total, initial=step, desc='train', disable=jax.process_index() != 0,
             dynamic_ncols=True)
  pending = None
  # On CPU the next step is called only once the previous one has finished. In a bench-like
  # script that called each ResNet50 joint step (224 px) while the previous one ran, every step's
  # buffers landed in fresh memory: the process grew by 2.7 GB a step to 17 GB, and faulting the
  # pages in slowed the steps from 13 s to 17-20 s. `bench/train_speed.py --queued` did not show
  # it in one run, so the cause is not pinned down (README, Benchmarks > Memory); waiting costs
  # nothing measurable here, and the batch is still read while the previous step runs.
  # Accelerators allocate from their own pools and keep one step queued.
  one_in_flight = jax.default_backend() == 'cpu'
  while step < total:
    batch = parallel.global_batch(next(train_iter), mesh)
    if pending is not None and one_in_flight:
      _check_finite(*pending, ckpt)
      pending = None
    if step < pre_steps:
      state, metrics = pretrain(state, batch)
    else:
      state, metrics = joint(state, batch, jax.random.fold_in(train_key, step))
    if pending is not None:  # Check the previous step while this one runs.
      _check_finite(*pending, ckpt)
    if step in (first_step, pre_steps):  # The stage's first step compiled its program.
      jax.block_until_ready(metrics)
      host_memory.release_freed_memory()
    pending = (step, metrics)
    step += 1
    bar.update(1)
    if step % config.train.log_every_steps == 0 or step == total:
      host = jax.device_get(metrics)
      writer.write(step, host, prefix='train/')
      bar.set_postfix({k: f'{float(v):.4f}' for k, v in host.items() if k in ('loss', 'dcg_ce')})
    end_of_epoch = step % spe == 0
    stage_end = step in (pre_steps, total)
    epoch = (step - pre_steps) // spe if step > pre_steps else 0
    validate = stage_end or (end_of_epoch and step > pre_steps
                             and epoch % config.train.eval_every_epochs == 0)
    if validate:
      _check_finite(*pending, ckpt)
      scores = validator(state, joint=step > pre_steps)
      host_memory.release_freed_memory()
      writer.write(step, scores, prefix='val/')
      logging.info('step %d validation (%s): %s', step, config.data.val_split, scores)
      key = config.train.select_metric if step > pre_steps else f'dcg_{config.train.select_metric}'
      # Stage-1 checkpoints compete only until the first joint validation replaces them.
      if step > pre_steps and (best['step'] is None or best['step'] <= pre_steps):
        best = {'score': -np.inf, 'step': None}
      if scores[key] > best['score']:
        best = {'score': float(scores[key]), 'step': step, 'metric': key}
        ckpt.save(step, state, None, config, {'best': best, 'val': scores}, best=True)
    if step % config.train.checkpoint_every_steps == 0 or stage_end:
      _check_finite(*pending, ckpt)
      ckpt.save(step, state, train_iter, config, {'best': best})
    if os.environ.get(FAULT_ENV) == str(step):
      os.kill(os.getpid(), signal.SIGKILL)
  bar.close()
  ckpt.wait()
  writer.close()
  logging.info('training done; best validation %s', best)
  # The final evaluation uses the validation-chosen checkpoint. The training state is freed before
  # it is restored: holding both raised the run's peak memory by 1.5 GB (ResNet50, 224 px).
  if (best_step := ckpt.latest_step(best=True)) is not None:
    target = checkpoint.abstract_like(state)
    del state
    state, meta = ckpt.restore(best_step, target, config, best=True)
    chosen = f"checkpoint of step {best_step}, best {meta['best']['metric']} on '{config.data.val_split}'"
    host_memory.release_freed_memory()
  else:
    chosen = f'last state, step {int(state.step)} (no validation checkpoint)'
  results = evaluate_splits(config, workdir, models, mesh, state, chosen)
  ckpt.close()
  return results
