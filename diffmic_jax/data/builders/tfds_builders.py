"""TFDS builders that write the preprocessed images to array_record (no TensorFlow needed).

One builder per dataset name (`aptos2019`, `isic2018`, `image_folder`, `medmnist`, `demo`), all
sharing `_DiffmicBuilder`: the split resolution of `builders/<name>.py`, then DiffMIC's crop and
resize, stored as encoded bytes. The config name carries the split scheme and the stored size
(`diffmic_224`), so builds with different sizes live side by side. The configs are made from
`config.data` by `dataset.builder_config_of`; build with `diffmic_jax.data.prepare(config.data)`. TFDS writes into an `incomplete.*`
folder and renames it only when every split is written, so a failed build leaves nothing a later
read would pick up.
"""

import dataclasses

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from diffmic_jax.data import builders as resolvers
from diffmic_jax.data.examples import DataError, Splits, check_splits, package_file
from diffmic_jax.data.preprocess import encode_example

VERSION = '1.0.0'


@dataclasses.dataclass(eq=False)
class DiffmicConfig(tfds.core.BuilderConfig):
  """How a build is done.

  Attributes:
    scheme: Split scheme ('diffmic', 'grouped', 'default', or the MedMNIST file name).
    stored_size: Side of the stored images; None keeps the source size (MedMNIST).
    num_classes: K (-1: the largest label + 1, image_folder only).
    encoding: 'jpeg' or 'png'.
    skip_bad: Skip undecodable images (listed in `skipped.txt`) instead of failing.
  """
  scheme: str = 'diffmic'
  stored_size: int | None = 224
  num_classes: int = -1
  encoding: str = 'jpeg'
  skip_bad: bool = False


def config_name(scheme: str, stored_size: int | None) -> str:
  return scheme if stored_size is None else f'{scheme}_{stored_size}'


class _DiffmicBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared build: resolve splits, check them, encode each image once."""

  VERSION = tfds.core.Version(VERSION)
  RESOLVER_NAME = ''
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'See the module docstring of diffmic_jax/data/builders/.'
  # TFDS finds a builder's folder through importlib_resources, which is not a dependency here
  # (and there is no checksums file to find): name it directly.
  code_path = epath.Path(__file__)

  def __init__(self, *args, resolved: Splits | None = None, **kwargs):
    self.resolved = resolved  # Splits already resolved and checked by `prepare`.
    self.skipped: list[str] = []
    super().__init__(*args, **kwargs)

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

  def _resolve(self, manual_dir: str) -> Splits:
    cfg = self.builder_config
    splits = resolvers.RESOLVERS[self.RESOLVER_NAME].resolve(manual_dir, cfg.scheme,
                                                             cfg.num_classes)
    k = cfg.num_classes if cfg.num_classes > 0 else 1 + max(
        ex.label for part in splits.values() for ex in part)
    return check_splits(splits, k, skip_bad=cfg.skip_bad, skipped=self.skipped)

  def _split_generators(self, dl_manager):
    splits = self.resolved or self._resolve(str(dl_manager.manual_dir))
    return {name: self._generate_examples(examples) for name, examples in splits.items()}

  def _generate_examples(self, examples):
    cfg = self.builder_config
    for ex in examples:
      try:
        data = encode_example(ex, cfg.stored_size, cfg.encoding)
      except DataError as e:
        if not cfg.skip_bad:
          raise
        logging.warning('Skipping: %s', e)
        self.skipped.append(str(e))
        continue
      yield ex.key, {'image': data, 'label': ex.label, 'id': ex.key}


class Aptos2019(_DiffmicBuilder):
  """APTOS 2019 Blindness Detection (diabetic-retinopathy grade 0-4)."""
  RESOLVER_NAME = 'aptos2019'


class Isic2018(_DiffmicBuilder):
  """ISIC 2018 Task 3 / HAM10000 (7 classes, DiffMIC order)."""
  RESOLVER_NAME = 'isic2018'


class ImageFolder(_DiffmicBuilder):
  """Any folder of images with `labels.csv` (file,label[,split][,group])."""
  RESOLVER_NAME = 'image_folder'


class Medmnist(_DiffmicBuilder):
  """A MedMNIST `.npz` file, official splits, stored at its own size as PNG."""
  RESOLVER_NAME = 'medmnist'


class Demo(Medmnist):
  """The embedded demo set: RetinaMNIST (CC BY 4.0), shipped in diffmic_jax/data/demo/."""
  DEMO_DIR = package_file('demo')


BUILDERS = {'aptos2019': Aptos2019, 'isic2018': Isic2018, 'image_folder': ImageFolder,
            'medmnist': Medmnist, 'demo': Demo}
