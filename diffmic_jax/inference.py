"""A trained run as a Python object: `Classifier.from_workdir(dir).predict(images)`.

The classifier owns the one inference path of the package: `--mode=predict`, `--mode=evaluate`,
the final evaluation of a training run and `--mode=export` all go through it. Images of any size
(uint8 arrays, PIL images or file paths) take exactly the way a built split takes: the build's
centre crop, resize and encode (`preprocess.encode_example`), the read's decode, padded batches of
`config.eval.batch_size` (`augment.EvalSource`), batch i sampled with `fold_in(eval key, i)`. So
the same files give the same numbers here as on the command line, and every batch has one shape:
the jitted function compiles once per batch shape. Batches are sharded over every device JAX has.
"""

import dataclasses
from typing import Any

import jax
import numpy as np
from PIL import Image

from diffmic_jax import calibration, evaluate, metrics, parallel, run_config, train_state
from diffmic_jax.data import files
from diffmic_jax.data.dataset import builder_config_of
from diffmic_jax.data.examples import Example
from diffmic_jax.data.preprocess import decode


@dataclasses.dataclass(frozen=True)
class Prediction:
  """Per-image results, in input order (N images, K classes, M samples).

  Attributes:
    probs: (N, K) the diffusion's class probabilities (mean over its M samples).
    pred: (N,) the diffusion's prediction (majority vote of the samples, ties to the larger mean).
    uncertainty: (N,) entropy of `probs` over log K: 0 certain, 1 uniform.
    dcg_probs: (N, K) the DCG's own fused prior.
    saliency: (N, h, w, K) the DCG's class saliency maps.
    roi_boxes: (N, R, 4) its ROI boxes in input pixels (top, left, bottom, right).
    attention: (N, R) its gated attention over the boxes.
    vote_agreement: (N,) fraction of samples that agree with `pred`.
    sample_probs: (M, N, K) each sample's probabilities, for measures beyond these.
    mean_probs: (N, K) the official read-out, the mean of the samples' softmax; `probs` is it
      tempered by the run's fitted temperature (identical at T = 1).
    votes: (N, K) the vote distribution of the samples.
    interval_width: (N,) width of the predicted class's y_0 interval over the samples (CARD).
    ttest_p: (N,) t-test p-value between the two most voted classes (CARD).
    ids: N names (file paths, or the position of an in-memory image).
    labels: (N,) true classes where known, else None.
    index: (N,) positions in the input.
  """
  probs: np.ndarray
  pred: np.ndarray
  uncertainty: np.ndarray
  dcg_probs: np.ndarray
  saliency: np.ndarray | None
  roi_boxes: np.ndarray | None
  attention: np.ndarray | None
  vote_agreement: np.ndarray
  sample_probs: np.ndarray
  ids: list = dataclasses.field(default_factory=list)
  labels: np.ndarray | None = None
  index: np.ndarray | None = None
  mean_probs: np.ndarray | None = None
  votes: np.ndarray | None = None
  interval_width: np.ndarray | None = None
  ttest_p: np.ndarray | None = None

  @property
  def dcg_pred(self) -> np.ndarray:
    return np.argmax(self.dcg_probs, axis=-1)

  def __len__(self) -> int:
    return len(self.pred)

  @classmethod
  def from_samples(cls, sampled: dict, ids=None, labelled: bool = False,
                   temperature: float = 1.0) -> 'Prediction':
    """From `evaluate.predict_split`'s host arrays (rows ordered by input index)."""
    summary = metrics.summarize_samples(sampled['sample_probs'])
    img = calibration.per_image(sampled['sample_y0'], temperature)
    return cls(probs=img['probs'], pred=summary['vote'],
               uncertainty=img['uncertainty'], dcg_probs=sampled['dcg_prob'],
               mean_probs=img['mean_prob'], votes=img['votes'],
               interval_width=img['interval_width'], ttest_p=img['ttest_p'],
               saliency=sampled.get('saliency'), roi_boxes=sampled.get('roi_boxes'),
               attention=sampled.get('attention'), vote_agreement=summary['vote_agreement'],
               sample_probs=sampled['sample_probs'],
               ids=[] if ids is None else [ids[int(i)] for i in sampled['index']],
               labels=sampled['label'] if labelled else None, index=sampled['index'])


def _example(image: Any, i: int) -> Example:
  """One input as the build's Example: a file by its path, anything else by its pixels."""
  if isinstance(image, (str, bytes)) or hasattr(image, '__fspath__'):
    path = str(image if not isinstance(image, bytes) else image.decode())
    return Example(key=path, label=-1, where=path, path=path)
  if isinstance(image, Image.Image):
    pixels = np.asarray(image.convert('RGB'))
  else:
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (
        pixels.ndim == 3 and pixels.shape[-1] not in (1, 3)):
      raise ValueError(f'image {i}: expected uint8 (H, W, 3) or (H, W), a PIL image or a file '
                       f'path, got {pixels.dtype} {pixels.shape}')
  return Example(key=str(i), label=-1, where=f'image {i}', pixels=pixels)


def _listed(images) -> files.ImageFiles:
  """A sequence of images, one image or an (N, H, W, 3) array, as the files predict reads."""
  if isinstance(images, np.ndarray) and images.ndim == 4:
    images = list(images)
  elif isinstance(images, (str, Image.Image)) or hasattr(images, '__fspath__') or (
      isinstance(images, np.ndarray) and images.ndim < 4):
    images = [images]
  examples = tuple(_example(image, i) for i, image in enumerate(images))
  if not examples:
    raise ValueError('no images to predict')
  return files.ImageFiles('<images>', examples, labelled=False)


class Classifier:
  """A restored DiffMIC model: DCG, epsilon network and the evaluation sampler of its config.

  Attributes:
    config: The run's config (`config.eval` sets the sampler, samples and batch size).
    models: The modules and diffusion schedule.
    step: The checkpoint's training step.
    description: Which checkpoint, for reports.
    spec: The sampler, its steps and samples.
  """

  def __init__(self, config, models, mesh, state, *, step: int, description: str,
               spec: evaluate.SamplerSpec | None = None, temperature_fitted: dict | None = None):
    self.config, self.models, self.mesh = config, models, mesh
    # The temperature `--mode=evaluate` fitted on validation for this checkpoint; T = 1 if none.
    self.temperature_fitted = temperature_fitted
    self.temperature = 1.0 if temperature_fitted is None else temperature_fitted['temperature']
    self.step, self.description = int(step), description
    self.spec = spec or evaluate.SamplerSpec(config.eval.sampler, config.eval.num_steps,
                                             config.eval.num_samples)
    self.dcg_vars = state.dcg.variables()
    self.eps_vars = state.eps.variables(state.eval_eps_params(evaluate.uses_ema(config)))
    self._predict_fn = evaluate.make_predict_fn(models, self.spec)

  @classmethod
  def from_workdir(cls, workdir: str, checkpoint: str | int = 'best', config=None) -> 'Classifier':
    """Restores checkpoint 'best' (validation-chosen), 'latest' or a step number of a run.

    Args:
      workdir: The training run's folder; its `config_train.json` names the model.
      checkpoint: Which checkpoint.
      config: Another config for the same model (e.g. other `eval.*` settings); default: the
        saved one.
    """
    config = run_config.load(workdir) if config is None else config
    r = evaluate.restore(config, str(workdir), str(checkpoint))
    fitted = calibration.load_temperature(evaluate.temperature_path(str(workdir), r.step))
    return cls(config, r.models, r.mesh, r.state, step=r.step, description=r.description,
               temperature_fitted=fitted)

  @property
  def num_classes(self) -> int:
    return self.models.num_classes

  @property
  def image_size(self) -> int:
    return int(self.config.image_size)

  @property
  def batch_size(self) -> int:
    return int(self.config.eval.batch_size)

  @property
  def key(self) -> jax.Array:
    """The base key of the sampler; batch i draws from fold_in(key, i)."""
    return train_state.keys(self.config.seed)['eval']

  def protocol(self) -> str:
    """Checkpoint, sampler, parameters and seed, as reports print them."""
    return (f'{self.description}; {self.spec.describe(self.config.diffusion.timesteps)}; '
            f"{'EMA' if evaluate.uses_ema(self.config) else 'raw'} epsilon-network params; "
            f'seed {self.config.seed}')

  def run(self, batches, *, keep_saliency: bool = True, progress=None, stop=None) -> dict:
    """`evaluate.predict_split` over padded, masked batches (a built split or `batches_of`)."""
    return evaluate.predict_split(self._predict_fn, self.dcg_vars, self.eps_vars, batches,
                                  self.mesh, self.key, keep_saliency=keep_saliency,
                                  progress=progress, stop=stop)

  def batches_of(self, images: files.ImageFiles):
    """This process's padded batches of `images`, read as a build would store them."""
    build = builder_config_of(self.config.data)
    parallel.check_batch_size(self.batch_size, self.mesh, 'eval.batch_size')
    return files.make_file_iterator(
        images, stored_size=build.stored_size, encoding=build.encoding,
        image_size=self.image_size, global_batch_size=self.batch_size,
        process_index=jax.process_index(), process_count=jax.process_count(),
        read_threads=self.config.data.read_threads)

  def preprocess(self, images) -> np.ndarray:
    """(N, S, S, 3) uint8: the images as the model sees them, before its normalisation."""
    build = builder_config_of(self.config.data)
    listed = files.records(_listed(images), build.stored_size, build.encoding)
    return np.stack([decode(listed[i]['image'], self.image_size) for i in range(len(listed))])

  def predict(self, images, *, saliency: bool = True) -> Prediction:
    """Predicts images: uint8 (H, W, 3) arrays of any size, PIL images or file paths.

    Args:
      images: A sequence of images, or one (N, H, W, 3) uint8 array.
      saliency: Keep the saliency maps, ROI boxes and attention (else those fields are None).

    Returns:
      A `Prediction` with one row per image, in input order.
    """
    listed = _listed(images)
    sampled = self.run(self.batches_of(listed), keep_saliency=saliency)
    return Prediction.from_samples(sampled, listed.ids, temperature=self.temperature)
