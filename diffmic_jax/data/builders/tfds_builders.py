"""TFDS builders that write the preprocessed images to array_record (no TensorFlow needed).

One builder per dataset name (`aptos2019`, `isic2018`, `image_folder`, `medmnist`, `demo`), all
sharing `_DiffmicBuilder`: the split resolution of `builders/<name>.py`, then DiffMIC's crop and
resize, stored as encoded bytes. The config name carries the split scheme, the stored size and,
unless JPEG + bicubic, the encoding and resize (`diffmic_224_png_bilinear`, the default, or
`diffmic_224`), so builds of different sizes or storage live side by side.

Each builder lists its configs in `BUILDER_CONFIGS` (every scheme at the stored sizes in
`STORED_SIZES`), so `tfds build` and `diffmic_jax.data.prepare(config.data)` name the same config
object and write the same folder, `<data_dir>/<name>/<scheme>_<size>/1.0.0`; a size not listed is
a custom config of the same shape (TFDS refuses a custom config named like a listed one, so the
builder swaps a copy for the listed object). From the command line, without TensorFlow:

    python -m diffmic_jax.data.cli build aptos2019 --config=diffmic_224_png_bilinear \
        --manual_dir=/path/to/aptos2019 --data_dir=~/tensorflow_datasets

(see `diffmic_jax/data/cli.py`; name `--config`, or every listed config is built). What does
not change the dataset's identity (skipping bad examples, the K labels are checked against) is a
builder argument, not a config field. Every build writes `source.json` (`source.py`) next to its
`dataset_info.json`, inside TFDS's temporary folder, so a build never appears without it. The
default file format is array_record, the only one written without TensorFlow and the one grain
reads. TFDS writes into an `incomplete.*` folder and renames it only when every split is written,
so a failed build leaves nothing a later read would pick up.
"""

import dataclasses
import os

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from diffmic_jax.data import builders as resolvers
from diffmic_jax.data import source
from diffmic_jax.data.examples import DataError, Splits, check_splits, class_count, package_file
from diffmic_jax.data.preprocess import encode_example

VERSION = '1.0.0'
STORED_SIZES = (224, 256)  # Listed configs; any other size is a custom config of the same shape.


@dataclasses.dataclass(eq=False)
class DiffmicConfig(tfds.core.BuilderConfig):
  """How a build is done.

  The name is always `config_name(scheme, stored_size, encoding, resize)`, so that a config given
  as JSON on the `tfds build` command line lands where `prepare` looks.

  Attributes:
    scheme: Split scheme ('diffmic', 'grouped', 'official', 'default', or the MedMNIST file name).
    stored_size: Side of the stored images; None keeps the source size (MedMNIST).
    num_classes: K, or -1: the dataset's fixed K, else (image_folder) the largest label + 1.
    encoding: 'jpeg' or 'png'.
    resize: PIL filter of the build-time resize, 'bilinear' (the official loader's
      `transforms.Resize`) or 'bicubic'.
  """
  scheme: str = 'diffmic'
  stored_size: int | None = 224
  num_classes: int = -1
  encoding: str = 'png'
  resize: str = 'bilinear'


def config_name(scheme: str, stored_size: int | None, encoding: str = 'png',
                resize: str = 'bilinear') -> str:
  """`scheme_size`, with `_encoding_resize` unless JPEG + bicubic (the first builds' names)."""
  if stored_size is None:
    return scheme
  suffix = '' if (encoding, resize) == ('jpeg', 'bicubic') else f'_{encoding}_{resize}'
  return f'{scheme}_{stored_size}{suffix}'


def _image_configs(module) -> list[DiffmicConfig]:
  return [DiffmicConfig(name=config_name(scheme, size, enc, resize), scheme=scheme,
                        stored_size=size, num_classes=module.NUM_CLASSES or -1, encoding=enc,
                        resize=resize,
                        description=f'{scheme} split, images stored at {size} px ({enc}, {resize})')
          for scheme in module.SCHEMES for size in STORED_SIZES
          for enc, resize in (('png', 'bilinear'), ('jpeg', 'bicubic'))]


def _medmnist_configs(schemes) -> list[DiffmicConfig]:
  return [DiffmicConfig(name=scheme, scheme=scheme, stored_size=None,
                        num_classes=resolvers.medmnist.KNOWN_CLASSES[scheme], encoding='png',
                        description=f'{scheme}.npz, official splits, source size (PNG)')
          for scheme in schemes]


class _DiffmicBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared build: resolve splits, check them, encode each image once."""

  VERSION = tfds.core.Version(VERSION)
  RESOLVER_NAME = ''
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'Pass --manual_dir; see diffmic_jax/data/builders/<name>.py.'
  # TFDS finds a builder's folder through importlib_resources, which is not a dependency here
  # (and there is no checksums file to find): name it directly.
  code_path = epath.Path(__file__)

  def __init__(self, *, resolved: Splits | None = None, manual_path: str | None = None,
               source_record: dict | None = None, num_classes: int = -1, skip_bad: bool = False,
               **kwargs):
    """Takes TFDS's arguments plus build options that leave the dataset's identity alone.

    Args:
      resolved: Splits already resolved and checked by `prepare` (None: resolve here).
      manual_path: The manual directory (or MedMNIST file) `resolved` came from; None: TFDS's.
      source_record: The source record of `resolved` that `prepare` compared (None: made here).
      num_classes: K for the label check when > 0 (the config's `num_classes`); else the
        config's K, else the largest label + 1.
      skip_bad: Skip bad examples (listed in `skipped`) instead of failing.
      **kwargs: `tfds.core.DatasetBuilder` arguments; `file_format` defaults to array_record.
    """
    self.resolved = resolved
    self.manual_path = manual_path
    self.num_classes = num_classes
    self.skip_bad = skip_bad
    self.skipped: list[str] = []
    self.source = source_record
    self._max_examples: int | None = None
    config = kwargs.get('config')
    if isinstance(config, tfds.core.BuilderConfig):
      # TFDS refuses a copy of a listed config (a `config.data`'s, or one unpickled in a grain
      # worker); the name fixes scheme and size, so the listed object is the same config.
      kwargs['config'] = self.get_builder_config(config.name, VERSION) or config
    file_format = tfds.core.file_adapters.FileFormat.from_value(
        kwargs.setdefault('file_format', 'array_record'))
    if file_format != tfds.core.file_adapters.FileFormat.ARRAY_RECORD:
      raise DataError(f'{self.name}: file_format {kwargs["file_format"]!r}; only array_record '
                      'is written without TensorFlow and read by the grain pipeline')
    super().__init__(**kwargs)
    cfg = self.builder_config
    want = config_name(cfg.scheme, cfg.stored_size, cfg.encoding, cfg.resize)
    if cfg.name != want:
      raise DataError(f'{self.name}: config name {cfg.name!r} must be {want!r} '
                      '(scheme, stored_size, encoding, resize)')

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'{self.name} for DiffMIC-JAX (centre-square crop, resize, encoded bytes).',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3),
                                         encoding_format=self.builder_config.encoding),
            'label': tfds.features.Scalar(dtype=np.int64),
            'id': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
    )

  def _known_k(self) -> int:
    cfg, module = self.builder_config, resolvers.RESOLVERS[self.RESOLVER_NAME]
    return next((k for k in (self.num_classes, cfg.num_classes, module.NUM_CLASSES or -1)
                 if k > 0), -1)

  def _resolve(self, manual_dir: str) -> Splits:
    k = self._known_k()
    splits = resolvers.RESOLVERS[self.RESOLVER_NAME].resolve(manual_dir, self.builder_config.scheme,
                                                             k)
    return check_splits(splits, class_count(splits, k), skip_bad=self.skip_bad,
                        skipped=self.skipped)

  def _manual_dir(self, dl_manager) -> str:
    return self.manual_path or str(dl_manager.manual_dir)

  def _download_and_prepare(self, dl_manager, download_config):
    self._max_examples = download_config.max_examples_per_split
    super()._download_and_prepare(dl_manager, download_config)
    if self.source is not None:  # Into TFDS's temporary folder: renamed with the build.
      source.write(epath.Path(self.data_dir), self.source)

  def _split_generators(self, dl_manager):
    manual_dir = os.path.abspath(self._manual_dir(dl_manager))
    splits = self.resolved or self._resolve(manual_dir)
    if self.source is None:
      k = class_count(splits, self.builder_config.num_classes)  # Not the K labels were checked by.
      options = {'skip_bad_examples': self.skip_bad, 'max_examples_per_split': self._max_examples}
      self.source = source.record(manual_dir, splits, k, options)
    return {name: self._generate_examples(examples) for name, examples in splits.items()}

  def _generate_examples(self, examples):
    cfg = self.builder_config
    for ex in examples:
      try:
        data = encode_example(ex, cfg.stored_size, cfg.encoding, cfg.resize)
      except DataError as e:
        if not self.skip_bad:
          raise
        logging.warning('Skipping: %s', e)
        self.skipped.append(str(e))
        continue
      yield ex.key, {'image': data, 'label': ex.label, 'id': ex.key}


class Aptos2019(_DiffmicBuilder):
  """APTOS 2019 Blindness Detection (diabetic-retinopathy grade 0-4)."""
  RESOLVER_NAME = 'aptos2019'
  MANUAL_DOWNLOAD_INSTRUCTIONS = resolvers.aptos2019.__doc__
  BUILDER_CONFIGS = _image_configs(resolvers.aptos2019)


class Isic2018(_DiffmicBuilder):
  """ISIC 2018 Task 3 / HAM10000 (7 classes, DiffMIC order)."""
  RESOLVER_NAME = 'isic2018'
  MANUAL_DOWNLOAD_INSTRUCTIONS = resolvers.isic2018.__doc__
  BUILDER_CONFIGS = _image_configs(resolvers.isic2018)


class ImageFolder(_DiffmicBuilder):
  """Any folder of images with `labels.csv` (file,label[,split][,group])."""
  RESOLVER_NAME = 'image_folder'
  MANUAL_DOWNLOAD_INSTRUCTIONS = resolvers.image_folder.__doc__
  BUILDER_CONFIGS = _image_configs(resolvers.image_folder)


class Medmnist(_DiffmicBuilder):
  """A MedMNIST `.npz` file, official splits, stored at its own size as PNG."""
  RESOLVER_NAME = 'medmnist'
  MANUAL_DOWNLOAD_INSTRUCTIONS = resolvers.medmnist.__doc__
  BUILDER_CONFIGS = _medmnist_configs(resolvers.medmnist.SCHEMES)


class Demo(Medmnist):
  """The embedded demo set: RetinaMNIST (CC BY 4.0), shipped in diffmic_jax/data/demo/."""
  DEMO_DIR = package_file('demo')
  BUILDER_CONFIGS = _medmnist_configs(['retinamnist'])

  def _manual_dir(self, dl_manager) -> str:
    del dl_manager  # The set ships with the package; no --manual_dir needed.
    return self.DEMO_DIR


BUILDERS = {'aptos2019': Aptos2019, 'isic2018': Isic2018, 'image_folder': ImageFolder,
            'medmnist': Medmnist, 'demo': Demo}
