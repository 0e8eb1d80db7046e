"""Evaluation in one place: restore for evaluation, whole-split metrics, validation, prediction.

Evaluation, prediction and a training run's final evaluation go through `inference.Classifier`,
which holds the restored variables and runs the pieces here. One jitted function per sampler
setting maps a batch to the DCG's probabilities and M sampled label vectors per image (features
and priors computed once, then the reverse chain as one `lax.scan`). The loop gathers masked rows from every process, so padded examples never count and
each example counts once; metrics are computed on the whole split, never averaged over batches.

A checkpoint is restored into an abstract target (`jax.eval_shape` of a training run's
initialisation), so nothing is allocated twice and a checkpoint of another model is refused with
the fields that differ; evaluation never reads the training split. Each evaluation or prediction
of a saved run writes to its own folder, `<out>/{eval,predict}/step_<N>/<source>/`, with its
browsable `index.html` (browse.py), and only once everything has run. Validation also keeps the
confusion matrix and a few saliency overlays for TensorBoard.
"""

import dataclasses
import functools
import io
import re

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from PIL import Image, ImageDraw
from tqdm import tqdm

from diffmic_jax import (browse, calibration, checkpoint, data, metrics, parallel, preemption,
                         report,
                         sampling, train_state)
from diffmic_jax.data import files
from diffmic_jax.data.dataset import builder_config_of, data_source
from diffmic_jax.data.normalize import normalize
from diffmic_jax.data.preprocess import decode
from diffmic_jax.errors import UserError
from diffmic_jax.models import EpsilonNet, priors as dcg_priors
from diffmic_jax.train_state import Models


TENSORBOARD_OVERLAYS = 4  # Validation images shown with their saliency in TensorBoard.


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
  method: str  # one of sampling.METHODS
  num_steps: int
  num_samples: int

  def describe(self, num_timesteps: int) -> str:
    return (f'{sampling.describe(self.method, self.num_steps, num_timesteps)}; '
            f'{self.num_samples} sample(s) per image')


def uses_ema(config) -> bool:
  """Whether evaluation reads the EMA of the epsilon-network params (see config.train)."""
  return bool(config.train.eval_with_ema and config.train.ema_decay > 0)


def sample_from_features(models: Models, spec: SamplerSpec, eps_vars, feats, priors, key,
                         y0: bool = False):
  """The diffusion's (M, B, K) sampled probabilities (with y0, the sampled y_0 themselves), from
  the epsilon network's encoder features and the DCG's priors (y_hat, y_hat_g, y_hat_l): the
  reverse chain runs only the head."""
  y_hat, y_hat_g, y_hat_l = priors
  cond = y_hat if models.eps.prior_input == 'fused' else (y_hat_g, y_hat_l)
  head = lambda f, y_t, p, t: models.eps.apply(eps_vars, f, y_t, p, t, False,
                                                method=EpsilonNet.head)
  sample = sampling.sample_y0 if y0 else sampling.sample_probs
  return sample(models.schedule, head, feats, cond, y_hat, key, method=spec.method,
                num_steps=spec.num_steps, num_samples=spec.num_samples)


def make_predict_fn(models: Models, spec: SamplerSpec):
  """jit(fn(dcg_vars, eps_vars, images uint8, key) -> outputs dict)."""
  if spec.method not in sampling.METHODS:
    raise ValueError(f'eval sampler must be one of {sampling.METHODS}, got {spec.method!r}')

  def predict(dcg_vars, eps_vars, images, key):
    x = normalize(images)
    out = models.dcg.apply(dcg_vars, x, train=False)
    priors = dcg_priors(out)
    feats = models.eps.apply(eps_vars, x, False, method=EpsilonNet.encode)
    y0 = sample_from_features(models, spec, eps_vars, feats, priors, key, y0=True)
    return {'dcg_prob': priors[0], 'sample_probs': jax.nn.softmax(y0, -1), 'sample_y0': y0,
            'saliency': out['saliency'],
            'roi_boxes': out['roi_boxes'], 'attention': out['attention']}

  return jax.jit(predict)


def _gather(tree: dict) -> dict:
  """Global arrays -> full numpy arrays on every process."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


_PER_SAMPLE = ('sample_probs', 'sample_y0')  # (M, N, K): the examples lie on axis 1.


def predict_split(predict_fn, dcg_vars, eps_vars, eval_batches, mesh, key, *,
                  keep_saliency: bool = False, progress=None, stop=None) -> dict:
  """Runs `predict_fn` over an eval iterable; returns host arrays ordered by example index.

  `stop` (a signal number, or 0) is asked before each batch: a stop signal ends a long loop
  within one batch, by raising preemption.Interrupted, instead of after the whole split.

  Returns:
    {'index' (N,), 'label' (N,), 'dcg_prob' (N, K), 'sample_probs' (M, N, K)}, 'sample_y0'
    (M, N, K) when predict_fn gives it, and, with keep_saliency, 'saliency', 'roi_boxes',
    'attention'.
  """
  keys = ['dcg_prob', 'sample_probs', 'sample_y0'] + (['saliency', 'roi_boxes', 'attention']
                                                      if keep_saliency else [])
  parts = []
  for i, local in enumerate(eval_batches):
    if stop is not None and (signum := stop()):
      raise preemption.Interrupted(signum)
    batch = parallel.global_batch(local, mesh)
    out = predict_fn(dcg_vars, eps_vars, batch['image'], jax.random.fold_in(key, i))
    host = _gather({**{k: out[k] for k in keys if k in out},
                    **{k: batch[k] for k in ('label', 'mask', 'index')}})
    m = host.pop('mask').astype(bool)
    for k in set(_PER_SAMPLE) & set(host):
      host[k] = host[k][:, m]
    parts.append({k: (v if k in _PER_SAMPLE else v[m]) for k, v in host.items()})
    if progress is not None:
      progress.update(int(m.sum()))
  if not parts:
    raise ValueError('the evaluation split yielded no batches')
  merged = {k: np.concatenate([p[k] for p in parts], axis=1 if k in _PER_SAMPLE else 0)
            for k in parts[0]}
  order = np.argsort(merged['index'], kind='stable')
  merged = {k: (v[:, order] if k in _PER_SAMPLE else v[order]) for k, v in merged.items()}
  if len(np.unique(merged['index'])) != len(merged['index']):
    raise AssertionError('an evaluation example was counted twice')
  return merged


def split_results(pred: dict, num_classes: int, split: str, protocol: str,
                  temperature: float | None = None) -> dict:
  """Whole-split metrics for the DCG alone, the diffusion's mean probability and its vote; with a
  temperature, also every calibrated probability and uncertainty (calibration.assess)."""
  summary = metrics.summarize_samples(pred['sample_probs'])
  labels = pred['label']
  out = {
      'split': split,
      'protocol': protocol,
      'n': int(len(labels)),
      'dcg': metrics.classification_metrics(labels, pred['dcg_prob'], num_classes),
      'diffusion': metrics.classification_metrics(labels, summary['mean_prob'], num_classes),
      'vote': metrics.classification_metrics(labels, summary['mean_prob'], num_classes,
                                             pred=summary['vote']),
      'mean_uncertainty': float(np.mean(summary['uncertainty'])),
  }
  if temperature is not None:
    out['calibration'] = calibration.assess(labels, pred['sample_y0'], pred['dcg_prob'],
                                            temperature)
  return out


def _eval_batches(config, split: str):
  return data.make_eval_iterator(config.data, split, image_size=config.image_size,
                                 global_batch_size=config.eval.batch_size,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count())


class Validator:
  """Validation on config.data.val_split: picks the best checkpoint by config.train.select_metric."""

  def __init__(self, config, models, mesh):
    e = config.eval
    self.config, self.mesh = config, mesh
    # Unset (None): the test chain itself, so the checkpoint is chosen by the metric reported.
    self.spec = SamplerSpec(e.val_sampler or e.sampler, e.val_num_steps or e.num_steps, 1)
    self.predict = make_predict_fn(models, self.spec)
    self.batches = _eval_batches(config, config.data.val_split)
    self.images = {}  # The last validation's TensorBoard images (process 0).

  def __call__(self, state, joint: bool, stop=None) -> dict:
    eps_params = state.eval_eps_params(uses_ema(self.config))
    pred = predict_split(self.predict, state.dcg.variables(), state.eps.variables(eps_params),
                         self.batches, self.mesh, train_state.keys(self.config.seed)['eval'],
                         keep_saliency=True, stop=stop)
    res = split_results(pred, self.config.num_classes, self.config.data.val_split,
                        self.spec.describe(self.config.diffusion.timesteps))
    scores = {f'dcg_{k}': res['dcg'][k] for k in ('accuracy', 'macro_f1', 'kappa_quadratic')}
    if joint:
      scores.update({k: res['diffusion'][k] for k in ('accuracy', 'macro_f1', 'kappa_quadratic')})
    if jax.process_index() == 0:
      self.images = self._images(pred, res, 'diffusion' if joint else 'dcg')
    return scores

  def _images(self, pred: dict, res: dict, who: str) -> dict:
    """The confusion matrix of the model being selected, and saliency overlays of the first
    TENSORBOARD_OVERLAYS images (input with ROI boxes | saliency of the predicted class)."""
    cm = res[who]['confusion_matrix']
    images = {'confusion_matrix': np.asarray(Image.open(io.BytesIO(report.confusion_png(
        cm, f'{who}, {self.config.data.val_split}'))).convert('RGB'))}
    records = data_source(self.config.data, self.config.data.val_split)
    size = self.config.image_size
    chosen = (metrics.summarize_samples(pred['sample_probs'])['vote'] if who == 'diffusion'
              else pred['dcg_prob'].argmax(-1))
    for i in range(min(TENSORBOARD_OVERLAYS, len(pred['index']))):
      image = decode(records[int(pred['index'][i])]['image'], size)
      boxed = Image.fromarray(image)
      draw = ImageDraw.Draw(boxed)
      for t, l, b, r in np.asarray(pred['roi_boxes'][i]).tolist():
        draw.rectangle((l, t, r - 1, b - 1), outline=(255, 255, 0))
      overlay = browse.saliency_overlay(image, pred['saliency'][i][..., int(chosen[i])])
      pair = np.concatenate([np.asarray(boxed), overlay], axis=1)
      zoom = max(1, 112 // size)  # Tiny inputs stay visible.
      images[f'saliency/{i}'] = pair.repeat(zoom, 0).repeat(zoom, 1)
    return images


def _classify(clf, batches, total: int, desc: str, keep_saliency: bool = False,
              stop=None) -> dict:
  """`clf.run` over `batches`, behind a progress bar."""
  with tqdm(total=total, desc=desc, disable=jax.process_index() != 0) as bar:
    return clf.run(batches, keep_saliency=keep_saliency, progress=bar, stop=stop)


def temperature_path(workdir: str, step: int) -> epath.Path:
  """Where the temperature of checkpoint `step` is kept, beside the run's checkpoints."""
  return epath.Path(workdir) / 'calibration' / f'step_{step}.json'


def fitted_temperature(config, clf, workdir: str, step: int, stop=None) -> dict:
  """{'temperature', ...} of checkpoint `step` under config.eval's chain.

  The saved one, unless config.eval.refit_temperature or it was fitted with another chain or
  number of samples; else fitted on config.data.val_split and saved when nothing was saved (and
  the workdir is writable). Without a validation split, T = 1: the official read-out.
  """
  path = temperature_path(workdir, step)
  sampler = clf.spec.describe(config.diffusion.timesteps)
  saved = calibration.load_temperature(path)
  if saved is not None and saved.get('sampler') == sampler and not config.eval.refit_temperature:
    return saved
  val = config.data.val_split
  if not val:
    return {'temperature': 1.0, 'fitted_on': None}
  pred = _classify(clf, _eval_batches(config, val), data.num_examples(config.data, val),
                   f'calibrate on {val}', stop=stop)
  mean_prob = calibration.per_image(pred['sample_y0'], 1.0)['mean_prob']
  fitted = {'temperature': calibration.fit_temperature(pred['label'], mean_prob), 'fitted_on': val,
            'n': int(len(pred['label'])), 'step': int(step), 'sampler': sampler}
  logging.info('temperature %.4f fitted on %s (n = %d)', fitted['temperature'], val, fitted['n'])
  if jax.process_index() == 0 and (saved is None or config.eval.refit_temperature):
    try:
      calibration.save_temperature(path, **fitted)
    except OSError as e:  # A read-only workdir: the reports still record the temperature used.
      logging.warning('could not save the temperature to %s: %s', path, e)
  return fitted


def _evaluate_split(config, clf, split: str, temperature: float | None = None,
                    keep_saliency: bool = False, stop=None) -> tuple[dict, dict]:
  """(whole-split results, per-image host arrays) of the classifier on `split`; nothing written."""
  pred = _classify(clf, _eval_batches(config, split), data.num_examples(config.data, split),
                   f'sample {split}', keep_saliency, stop)
  return split_results(pred, config.num_classes, split, clf.protocol(), temperature), pred


def evaluate_splits(config, workdir, models, mesh, state, chosen: str, step: int,
                    stop=None) -> dict:
  """A training run's final evaluation: config.eval.splits, reported in <workdir>/reports, with
  the temperature of checkpoint `step` fitted on validation first."""
  from diffmic_jax.inference import Classifier  # It builds on this module.
  clf = Classifier(config, models, mesh, state, step=step, description=chosen)
  t = fitted_temperature(config, clf, workdir, step, stop)['temperature']
  out = {}
  for split in config.eval.splits:
    res, _ = _evaluate_split(config, clf, split, t, stop=stop)
    if jax.process_index() == 0:
      paths = report.write_report(res, str(epath.Path(workdir) / 'reports'), split)
      logging.info('%s results (%s):\n%s', split, paths['txt'], report.format_table(res))
    out[split] = res
  return out


@dataclasses.dataclass(frozen=True)
class Restored:
  """A checkpoint restored for evaluation."""
  models: Models
  mesh: jax.sharding.Mesh
  state: train_state.TrainState
  step: int
  description: str  # Which checkpoint, for reports.


def _which_step(ckpt: checkpoint.Checkpointer, workdir: str, which: str) -> tuple[int, bool]:
  """(step, whether it is read from best/) for 'best', 'latest' or a step number."""
  if which in ('best', 'latest'):
    best = which == 'best'
    step = ckpt.latest_step(best=best)
    if step is None and best:  # A run without validation saves only periodic checkpoints.
      step, best = ckpt.latest_step(), False
    if step is None:
      raise FileNotFoundError(f'no checkpoint under {workdir}/checkpoints or {workdir}/best')
    return step, best
  try:
    step = int(which)
  except ValueError:
    raise UserError(f"--checkpoint must be 'best', 'latest' or a step number, got {which!r}") from None
  periodic, best = ckpt.periodic.all_steps(), ckpt.best.all_steps()
  if step not in periodic and step not in best:
    raise FileNotFoundError(f'no checkpoint of step {step} under {workdir}: periodic steps '
                            f'{sorted(periodic)}, best {sorted(best)}')
  return step, step not in periodic


def restore(config, workdir: str, which: str = 'best') -> Restored:
  """Restores checkpoint `which` ('best', 'latest' or a step) of `workdir`, read-only.

  The optimizers' learning-rate schedule does not change the state's structure, so the models are
  built for a one-step epoch: nothing here reads the training split.
  """
  mesh = parallel.make_mesh()
  models = train_state.build_models(config, steps_per_epoch=1)
  ckpt = checkpoint.Checkpointer(workdir, config.train.max_to_keep, read_only=True)
  try:
    step, best = _which_step(ckpt, workdir, which)
    init = jax.jit(functools.partial(train_state.init_state, models, image_size=config.image_size),
                   out_shardings=parallel.replicated(mesh))
    abstract = jax.eval_shape(init, jax.random.key(0))
    try:
      state, _ = ckpt.restore(step, abstract, config, best=best)
    except checkpoint.ConfigMismatchError as e:
      raise checkpoint.ConfigMismatchError(
          f'{e}\nWithout --config, evaluate and predict use the config the run saved '
          f'({workdir}/config_train.json).') from None
    except UserError:
      raise
    except Exception as e:  # noqa: BLE001  Files damaged on disk: name them and what still reads.
      raise checkpoint.DamagedCheckpointError(ckpt.damaged_message(step, best, e)) from e
  finally:
    ckpt.close()
  kind = f"best on '{config.data.val_split}'" if best else 'periodic'
  return Restored(models, mesh, state, step,
                  f'{kind} checkpoint of step {step} ({ckpt.path(step, best)})')


def fresh_dir(root: str, kind: str, step: int, source: str) -> epath.Path:
  """`<root>/<kind>/step_<step>/<source>`, or `<source>_2`, `_3`, ... when that one exists."""
  name = re.sub(r'[^\w.+-]+', '_', source).strip('._') or 'input'
  parent = epath.Path(root) / kind / f'step_{step}'
  path, i = parent / name, 1
  while path.exists():
    i += 1
    path = parent / f'{name}_{i}'
  if i > 1:
    logging.warning('%s exists: writing to %s instead', parent / name, path)
  return path


def claim_dir(root: str, kind: str, step: int, source: str) -> epath.Path:
  """`fresh_dir`, created here: of two evaluations finishing at once, each gets its own folder."""
  while True:
    path = fresh_dir(root, kind, step, source)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
      path.mkdir(exist_ok=False)
      return path
    except FileExistsError:
      continue  # Taken meanwhile by another evaluation: the next free name.


def _write_config(config, out: epath.Path) -> None:
  out.mkdir(parents=True, exist_ok=True)
  (out / 'config.json').write_text(config.to_json_best_effort(indent=2))


def evaluate_checkpoint(config, workdir: str, which: str = 'best',
                        output_dir: str | None = None) -> dict:
  """Evaluates a saved checkpoint on config.eval.splits.

  Writes `<output_dir or workdir>/eval/step_<N>/<split>/` (report.{json,txt}, the confusion and
  reliability plots, config.json, index.html with every image) for each split, once all of them
  are done.

  Returns:
    {split: results, with 'dir' the folder written}.
  """
  from diffmic_jax.inference import Classifier, Prediction  # They build on this module.
  clf = Classifier.from_workdir(workdir, which, config)
  t = fitted_temperature(config, clf, workdir, clf.step)['temperature']
  results, per_image = {}, {}
  for split in config.eval.splits:
    results[split], per_image[split] = _evaluate_split(config, clf, split, t, keep_saliency=True)
  if jax.process_index() == 0:
    for split, res in results.items():
      out = claim_dir(output_dir or workdir, 'eval', clf.step, split)
      _write_config(config, out)
      paths = report.write_report(res, str(out), 'report')
      _, records, ids, _, _, _ = _prediction_input(config, split, None)
      browse.write_page(out, Prediction.from_samples(per_image[split], ids, True, t),
                        records, config.image_size, title=f'{split}: {clf.description}',
                        results=res, figures={k: epath.Path(paths[k]).name
                                              for k in ('confusion', 'reliability')})
      logging.info('%s results (%s):\n%s', split, paths['txt'], report.format_table(res))
      res['dir'] = str(out)
  return results


def _prediction_input(config, split: str | None, input_path: str | None):
  """(source name, stored records, ids, labelled, batches, skipped files) for a built split or
  image files."""
  if input_path is not None:
    images = files.list_images(input_path, config.num_classes, config.eval.skip_unreadable)
    build = builder_config_of(config.data)
    records = files.records(images, build.stored_size, build.encoding, build.resize)
    batches = files.make_file_iterator(
        images, stored_size=build.stored_size, encoding=build.encoding, resize=build.resize,
        image_size=config.image_size, global_batch_size=config.eval.batch_size,
        process_index=jax.process_index(), process_count=jax.process_count(),
        read_threads=config.data.read_threads)
    return images.name, records, images.ids, images.labelled, batches, images.skipped
  records = data_source(config.data, split)
  ids = [r['id'].decode() if isinstance(r['id'], bytes) else str(r['id'])
         for r in records.__getitems__(range(len(records)))]
  return split, records, ids, True, _eval_batches(config, split), ()


def predict(config, workdir: str, which: str = 'best', *, split: str | None = None,
            input_path: str | None = None, output_dir: str | None = None) -> dict:
  """Per-image predictions of a saved checkpoint on a built split or on image files.

  Args:
    config: The run's config (its model must match the checkpoint's).
    workdir: The training run's folder.
    which: 'best', 'latest' or a step number.
    split: A built split of config.data (e.g. 'test'); or
    input_path: A folder of images or a CSV listing them (`data.files`); no dataset is built.
    output_dir: Where `predict/step_<N>/<source>/` goes (default: workdir).

  Returns:
    {source: {'n', 'checkpoint'} and, on process 0, 'dir' and 'csv'}.
  """
  if (split is None) == (input_path is None):
    raise UserError('predict needs exactly one of --split (a built split) or --input (a folder '
                     'of images or a CSV of files)')
  from diffmic_jax.inference import Classifier, Prediction  # They build on this module.
  source, records, ids, labelled, batches, skipped = _prediction_input(config, split, input_path)
  clf = Classifier.from_workdir(workdir, which, config)
  if clf.temperature_fitted is None:
    logging.warning('no temperature saved for step %d under %s: probabilities use T = 1 (the '
                    'official read-out); `--mode=evaluate` fits and saves it', clf.step, workdir)
  elif clf.temperature_fitted.get('sampler') != clf.spec.describe(config.diffusion.timesteps):
    logging.warning('the saved temperature was fitted with %s; this prediction samples otherwise',
                    clf.temperature_fitted.get('sampler'))
  sampled = _classify(clf, batches, len(ids), f'predict {source}', keep_saliency=True)
  pred = Prediction.from_samples(sampled, ids, labelled, clf.temperature)
  result = {'n': len(pred), 'checkpoint': clf.description, 'temperature': clf.temperature}
  if jax.process_index() == 0:
    out = claim_dir(output_dir or workdir, 'predict', clf.step, source)
    _write_config(config, out)
    result.update(dir=str(out), csv=str(out / 'predictions.csv'))
    if skipped:
      (out / 'skipped.txt').write_text('\n'.join(skipped) + '\n')
      logging.warning('left out %d unreadable images, listed in %s', len(skipped),
                      out / 'skipped.txt')
    report.write_predictions_csv(
        result['csv'], pred.ids, pred.labels, pred.probs, pred.pred, pred.uncertainty,
        pred.dcg_probs, vote_agreement=pred.vote_agreement,
        extra={'interval_width': pred.interval_width, 'ttest_p': pred.ttest_p,
               **{f'vote_p_{c}': pred.votes[:, c] for c in range(config.num_classes)},
               **{f'mean_p_{c}': pred.mean_probs[:, c] for c in range(config.num_classes)}})
    if config.eval.save_saliency:
      _save_overlays(config, records, ids, sampled, {'vote': pred.pred}, labelled,
                     out / 'saliency', config.eval.max_saliency_images)
    result['page'] = str(browse.write_page(out, pred, records, config.image_size,
                                           title=f'{source}: {clf.description}'))
  return {source: result}


def overlay_names(ids) -> list[str]:
  """A PNG name per image id: the id without its suffix, '/' as '__', unique."""
  names, seen = [], set()
  for image_id in ids:
    stem = re.sub(r'\.(jpe?g|png|bmp|tiff?|webp)$', '', str(image_id), flags=re.I)
    stem = re.sub(r'[^\w.+-]+', '_', stem.replace('/', '__')) or 'image'
    name, i = stem, 1
    while name in seen:
      i += 1
      name = f'{stem}_{i}'
    seen.add(name)
    names.append(f'{name}.png')
  return names


def _save_overlays(config, records, ids, pred, summary, labelled, out: epath.Path, limit: int):
  """Saliency of the predicted class with the ROI boxes, for the first `limit` images."""
  out.mkdir(parents=True, exist_ok=False)
  rows = range(min(limit, len(pred['index'])))
  names = overlay_names([ids[int(pred['index'][i])] for i in rows])
  for i, name in zip(rows, names):
    image = decode(records[int(pred['index'][i])]['image'], config.image_size)
    cls = int(summary['vote'][i])
    label = f', label {int(pred["label"][i])}' if labelled else ''
    title = f'{ids[int(pred["index"][i])]}{label}, predicted {cls}'
    report.save_saliency_overlay(str(out / name), image, pred['saliency'][i][..., cls],
                                 pred['roi_boxes'][i], pred['attention'][i], title=title)
