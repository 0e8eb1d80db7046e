"""Prediction and whole-split evaluation: the DCG alone beside the diffusion, on one split.

One jitted function per sampler setting maps a batch to the DCG's probabilities and M sampled
label vectors per image (features and priors computed once, then the reverse chain as one
`lax.scan`). The loop gathers masked rows from every process, so padded examples never count and
each example counts once; metrics are computed on the whole split, never averaged over batches.
"""

import dataclasses

import jax
import numpy as np
from jax.experimental import multihost_utils

from diffmic_jax import metrics, parallel, sampling
from diffmic_jax.data.normalize import normalize
from diffmic_jax.models import EpsilonNet, priors as dcg_priors
from diffmic_jax.train_state import Models


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
  method: str  # one of sampling.METHODS
  num_steps: int
  num_samples: int

  def describe(self, num_timesteps: int) -> str:
    return (f'{sampling.describe(self.method, self.num_steps, num_timesteps)}; '
            f'{self.num_samples} sample(s) per image')


def make_predict_fn(models: Models, spec: SamplerSpec):
  """jit(fn(dcg_vars, eps_vars, images uint8, key[, encoder_images]) -> outputs dict).

  `encoder_images`, when given, is what the epsilon network's encoder sees instead of `images`
  (the DCG and its priors still see `images`). It exists for one diagnostic: giving the encoder
  other images asks how much of the diffusion's prediction comes from its own view of the image
  rather than from the DCG's prior (bench/diffusion_vs_dcg.py).
  """
  if spec.method not in sampling.METHODS:
    raise ValueError(f'eval sampler must be one of {sampling.METHODS}, got {spec.method!r}')

  def predict(dcg_vars, eps_vars, images, key, encoder_images=None):
    x = normalize(images)
    out = models.dcg.apply(dcg_vars, x, train=False)
    y_hat, y_hat_g, y_hat_l = dcg_priors(out)
    cond = y_hat if models.eps.prior_input == 'fused' else (y_hat_g, y_hat_l)
    x_enc = x if encoder_images is None else normalize(encoder_images)
    feats = models.eps.apply(eps_vars, x_enc, False, method=EpsilonNet.encode)
    head = lambda f, y_t, p, t: models.eps.apply(eps_vars, f, y_t, p, t, False,
                                                  method=EpsilonNet.head)
    probs = sampling.sample_probs(models.schedule, head, feats, cond, y_hat, key,
                                  method=spec.method, num_steps=spec.num_steps,
                                  num_samples=spec.num_samples)
    return {'dcg_prob': y_hat, 'sample_probs': probs, 'saliency': out['saliency'],
            'roi_boxes': out['roi_boxes'], 'attention': out['attention']}

  return jax.jit(predict)


def _gather(tree: dict) -> dict:
  """Global arrays -> full numpy arrays on every process."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def predict_split(predict_fn, dcg_vars, eps_vars, eval_batches, mesh, key, *,
                  keep_saliency: bool = False, progress=None) -> dict:
  """Runs `predict_fn` over an eval iterable; returns host arrays ordered by example index.

  Returns:
    {'index' (N,), 'label' (N,), 'dcg_prob' (N, K), 'sample_probs' (M, N, K)} and, with
    keep_saliency, 'saliency', 'roi_boxes', 'attention'.
  """
  keys = ['dcg_prob', 'sample_probs'] + (['saliency', 'roi_boxes', 'attention'] if keep_saliency else [])
  parts = []
  for i, local in enumerate(eval_batches):
    batch = parallel.global_batch(local, mesh)
    out = predict_fn(dcg_vars, eps_vars, batch['image'], jax.random.fold_in(key, i))
    host = _gather({**{k: out[k] for k in keys},
                    **{k: batch[k] for k in ('label', 'mask', 'index')}})
    m = host.pop('mask').astype(bool)
    host['sample_probs'] = host['sample_probs'][:, m]
    parts.append({k: (v if k == 'sample_probs' else v[m]) for k, v in host.items()})
    if progress is not None:
      progress.update(int(m.sum()))
  if not parts:
    raise ValueError('the evaluation split yielded no batches')
  merged = {k: np.concatenate([p[k] for p in parts], axis=1 if k == 'sample_probs' else 0)
            for k in parts[0]}
  order = np.argsort(merged['index'], kind='stable')
  merged = {k: (v[:, order] if k == 'sample_probs' else v[order]) for k, v in merged.items()}
  if len(np.unique(merged['index'])) != len(merged['index']):
    raise AssertionError('an evaluation example was counted twice')
  return merged


def split_results(pred: dict, num_classes: int, split: str, protocol: str) -> dict:
  """Whole-split metrics for the DCG alone, the diffusion's mean probability and its vote."""
  summary = metrics.summarize_samples(pred['sample_probs'])
  labels = pred['label']
  return {
      'split': split,
      'protocol': protocol,
      'n': int(len(labels)),
      'dcg': metrics.classification_metrics(labels, pred['dcg_prob'], num_classes),
      'diffusion': metrics.classification_metrics(labels, summary['mean_prob'], num_classes),
      'vote': metrics.classification_metrics(labels, summary['mean_prob'], num_classes,
                                             pred=summary['vote']),
      'mean_uncertainty': float(np.mean(summary['uncertainty'])),
  }
