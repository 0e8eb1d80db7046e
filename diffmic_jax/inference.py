"""Evaluate and predict from a saved run: restore into an abstract target, sample, write files.

The abstract target comes from `jax.eval_shape` of the same initialisation a training run uses,
so nothing is allocated twice and a checkpoint from another config is refused with the fields
that differ (checkpoint.check_compatible).
"""

import functools

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from diffmic_jax import checkpoint, data, evaluate, metrics, parallel, report, train, train_state


def sync(name: str) -> None:
  """A barrier across processes (a no-op for one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def restore(config, workdir: str, which: str = 'best'):
  """Restores a checkpoint of `workdir` ('best', 'latest' or a step). Returns (models, mesh,
  state, description)."""
  mesh = parallel.make_mesh()
  models = train_state.build_models(config, train.steps_per_epoch(config))
  ckpt = checkpoint.Checkpointer(workdir, config.train.max_to_keep)
  best = which == 'best'
  if which in ('best', 'latest'):
    step = ckpt.latest_step(best=best)
    if step is None and best:  # A run without validation saves only periodic checkpoints.
      step, best = ckpt.latest_step(), False
  else:
    try:
      step = int(which)
    except ValueError:
      raise ValueError(f"--checkpoint must be 'best', 'latest' or a step number, got {which!r}") from None
  if step is None:
    raise FileNotFoundError(f'no checkpoint under {workdir}/checkpoints or {workdir}/best')
  init = jax.jit(functools.partial(train_state.init_state, models, image_size=config.image_size),
                 out_shardings=parallel.replicated(mesh))
  abstract = jax.eval_shape(init, jax.random.key(0))
  state, meta = ckpt.restore(step, abstract, config, best=best)
  ckpt.close()
  kind = f"best on '{config.data.val_split}'" if best else 'periodic'
  return models, mesh, state, f'{kind} checkpoint of step {step} ({ckpt.path(step, best)})'


def evaluate_checkpoint(config, workdir: str, which: str = 'best') -> dict:
  models, mesh, state, chosen = restore(config, workdir, which)
  return train.evaluate_splits(config, workdir, models, mesh, state, chosen)


def predict(config, workdir: str, split: str, which: str = 'best') -> dict:
  """Writes <workdir>/predictions/<split>.csv and, if config.eval.save_saliency, saliency PNGs."""
  models, mesh, state, chosen = restore(config, workdir, which)
  e = config.eval
  spec = evaluate.SamplerSpec(e.sampler, e.num_steps, e.num_samples)
  use_ema = train.uses_ema(config)
  batches = data.make_eval_iterator(config.data, split, image_size=config.image_size,
                                    global_batch_size=e.batch_size,
                                    process_index=jax.process_index(),
                                    process_count=jax.process_count())
  pred = evaluate.predict_split(evaluate.make_predict_fn(models, spec), state.dcg.variables(),
                                state.eps.variables(state.eval_eps_params(use_ema)), batches, mesh,
                                train._keys(config.seed)['eval'], keep_saliency=e.save_saliency)
  out_dir = epath.Path(workdir) / 'predictions'  # Local or a URL such as gs://bucket/run.
  csv = str(out_dir / f'{split}.csv')
  summary = metrics.summarize_samples(pred['sample_probs'])
  if jax.process_index() == 0:
    out_dir.mkdir(parents=True, exist_ok=True)
    report.write_predictions_csv(csv, pred['index'], pred['label'], summary['mean_prob'],
                                 summary['vote'], summary['uncertainty'], pred['dcg_prob'])
    if e.save_saliency:
      _save_saliency(config, split, pred, summary, out_dir / f'{split}_saliency')
  return {split: {'csv': csv, 'n': int(len(pred['index'])), 'checkpoint': chosen}}


def _save_saliency(config, split: str, pred: dict, summary: dict, out_dir: epath.Path,
                   limit: int = 64):
  """Saliency of the predicted class with the ROI boxes, for the first `limit` images."""
  out_dir.mkdir(parents=True, exist_ok=True)
  batches = data.make_eval_iterator(config.data, split, image_size=config.image_size,
                                    global_batch_size=limit)
  images = next(iter(batches))
  for row, idx in enumerate(images['index']):
    if not images['mask'][row] or row >= len(pred['index']):
      continue
    i = int(np.searchsorted(pred['index'], idx))
    cls = int(summary['vote'][i])
    report.save_saliency_overlay(str(out_dir / f'{int(idx):05d}.png'), images['image'][row],
                                 pred['saliency'][i][..., cls], pred['roi_boxes'][i],
                                 pred['attention'][i],
                                 title=f'label {int(pred["label"][i])}, predicted {cls}')
