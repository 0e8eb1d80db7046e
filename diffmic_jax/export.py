"""A trained model that ships without this package: `jax.export` of its inference, weights inside.

`--mode=export` writes `<out>/export/step_<N>/model/`:
  model.jax   serialized StableHLO (`jax.export.Exported.serialize`) of
              f(images uint8 (b, S, S, 3), seed uint32, batch uint32) -> {'probs', 'pred',
              'uncertainty', 'vote_agreement', 'dcg_probs', 'saliency', 'roi_boxes',
              'attention', 'sample_probs'}: normalisation, the DCG, the epsilon network and the
              config's sampler with its fixed steps and samples; the weights are constants of the
              module. The batch b is symbolic (any size); batch i of `Classifier.predict` is
              `seed = config.seed, batch = i` on images padded to `config.eval.batch_size`.
  model.json  what a caller must know: input size and preprocessing, normalisation, classes,
              sampler, seed, outputs, the JAX version and serialization version that wrote it.

Loading needs only `jax`: `jax.export.deserialize(bytes).call(images, seed, batch)`. The
preprocessing (centre crop, resize, decode) stays outside: it is PIL's, not a JAX program.
"""

import json

import jax
from absl import logging
import jax.numpy as jnp
import numpy as np
from etils import epath

from diffmic_jax import train_state
from diffmic_jax.data.dataset import builder_config_of
from diffmic_jax.data.normalize import IMAGENET_MEAN, IMAGENET_STD

PLATFORMS = ('cpu', 'cuda', 'tpu')
MODEL_FILE, META_FILE = 'model.jax', 'model.json'


def summarize(sample_probs):
  """`metrics.summarize_samples` in jnp, so the exported module returns the same read-out."""
  m, _, k = sample_probs.shape
  mean_prob = sample_probs.mean(0)
  counts = jax.nn.one_hot(jnp.argmax(sample_probs, -1), k).sum(0)
  tied = counts == counts.max(-1, keepdims=True)
  vote = jnp.argmax(jnp.where(tied, mean_prob, -jnp.inf), -1)
  return {'probs': mean_prob, 'pred': vote.astype(jnp.int32),
          'vote_agreement': jnp.take_along_axis(counts, vote[:, None], 1)[:, 0] / m,
          'uncertainty': _entropy(mean_prob)}


def _entropy(probs):
  k = probs.shape[-1]
  p = jnp.clip(probs, 1e-12, 1.0)
  p = p / p.sum(-1, keepdims=True)
  entropy = -(p * jnp.log(p)).sum(-1) / np.log(k) if k > 1 else jnp.zeros(p.shape[:-1])
  return jnp.clip(entropy, 0.0, 1.0)


def tempered(probs, temperature: float):
  """`calibration.tempered` in jnp: softmax(log p / T)."""
  p = jnp.clip(probs, 1e-12, None)
  return jax.nn.softmax(jnp.log(p / p.sum(-1, keepdims=True)) / temperature, -1)


def inference_fn(clf):
  """f(images, seed, batch) of the module docstring, with the classifier's weights as constants."""
  # Host copies: constants of the module, not arrays tied to this process's devices.
  dcg_vars, eps_vars = jax.tree.map(np.asarray, (clf.dcg_vars, clf.eps_vars))
  predict = clf._predict_fn  # The classifier's own jitted function: one inference program.

  def infer(images, seed, batch):
    key = jax.random.fold_in(train_state.keys.__wrapped__(seed)['eval'], batch)  # Uncached: traced.
    out = predict(dcg_vars, eps_vars, images, key)
    read_out = summarize(out['sample_probs'])
    probs = tempered(read_out['probs'], clf.temperature)  # The classifier's fitted temperature.
    read_out.update(mean_probs=read_out['probs'], probs=probs, uncertainty=_entropy(probs))
    return {**read_out, 'dcg_probs': out['dcg_prob'],
            'saliency': out['saliency'], 'roi_boxes': out['roi_boxes'],
            'attention': out['attention'], 'sample_probs': out['sample_probs']}

  return infer


def export_model(clf, platforms=PLATFORMS) -> jax.export.Exported:
  """The classifier's inference as a `jax.export.Exported` for `platforms`, batch symbolic."""
  (b,) = jax.export.symbolic_shape('b')
  s = clf.image_size
  args = (jax.ShapeDtypeStruct((b, s, s, 3), jnp.uint8), jax.ShapeDtypeStruct((), jnp.uint32),
          jax.ShapeDtypeStruct((), jnp.uint32))
  return jax.export.export(jax.jit(inference_fn(clf)), platforms=platforms)(*args)


def metadata(clf, exported: jax.export.Exported) -> dict:
  config = clf.config
  build = builder_config_of(config.data)
  stored = build.stored_size
  return {
      'format': 'jax.export',
      'model_file': MODEL_FILE,
      'jax_version': jax.__version__,
      'serialization_version': exported.calling_convention_version,
      'platforms': list(exported.platforms),
      'checkpoint': clf.description,
      'input': {
          'shape': ['b', clf.image_size, clf.image_size, 3], 'dtype': 'uint8', 'layout': 'NHWC RGB',
          'image_size': clf.image_size, 'batch_size': clf.batch_size,
          'preprocessing': (
              'RGB; centre square crop of side min(H, W); '
              + (f'bicubic resize to {stored}x{stored}; ' if stored else '')
              + f'{build.encoding} encode' + (' (quality 95)' if build.encoding == 'jpeg' else '')
              + '; decode (PIL draft mode for JPEG); bilinear resize to '
              f'{clf.image_size}x{clf.image_size} (diffmic_jax Classifier.preprocess)'),
      },
      'normalisation': {'inside_model': True, 'scale': 1 / 255, 'mean': list(IMAGENET_MEAN),
                        'std': list(IMAGENET_STD)},
      'classes': [str(c) for c in range(clf.num_classes)],
      'sampler': {'method': clf.spec.method, 'num_steps': clf.spec.num_steps,
                  'num_samples': clf.spec.num_samples,
                  'description': clf.spec.describe(config.diffusion.timesteps)},
      'seed': int(config.seed),
      'temperature': clf.temperature,
      'call': ('model.call(images uint8 (b, S, S, 3), np.uint32(seed), np.uint32(batch)): '
               'batch i of Classifier.predict is seed = the seed here, batch = i, on images '
               'padded to input.batch_size'),
      'outputs': {k: {'shape': [str(d) for d in v.shape], 'dtype': str(v.dtype)} for k, v in
                  jax.tree.unflatten(exported.out_tree, exported.out_avals).items()},
  }


def export_checkpoint(config, workdir: str, which: str = 'best',
                      output_dir: str | None = None) -> dict:
  """`--mode=export`: checkpoint `which` of `workdir` into
  `<output_dir or workdir>/export/step_<N>/model/`."""
  from diffmic_jax.evaluate import claim_dir
  from diffmic_jax.inference import Classifier
  clf = Classifier.from_workdir(workdir, which, config)
  if jax.process_index() != 0:
    return {}
  return write(clf, claim_dir(output_dir or workdir, 'export', clf.step, 'model'))


def write(clf, out) -> dict:
  """Writes model.jax and model.json into the folder `out` (made if absent); returns their
  paths."""
  exported = export_model(clf)
  out = epath.Path(out)
  logging.info('exported for %s: %s', ', '.join(exported.platforms), out)
  out.mkdir(parents=True, exist_ok=True)
  (out / MODEL_FILE).write_bytes(bytes(exported.serialize()))
  (out / META_FILE).write_text(json.dumps(metadata(clf, exported), indent=2))
  return {'dir': str(out), 'model': str(out / MODEL_FILE), 'meta': str(out / META_FILE)}
