"""From `config.data` to a built TFDS dataset and its random-access sources.

`prepare` builds once (idempotent); `num_examples`, `class_counts` and `data_source` read what was
built. Reading needs only the array_record files and `dataset_info.json`, not the manual folder.
A remote `data.data_dir` (gs://...) is built on local disk and uploaded, and read from a copy
each host stages once (`staging.py`): array_record opens local files only.
"""

import functools
import os
import shutil

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from diffmic_jax.data import builders as resolvers
from diffmic_jax.data import staging
from diffmic_jax.data.builders import medmnist
from diffmic_jax.data.builders.tfds_builders import BUILDERS, VERSION, DiffmicConfig, config_name
from diffmic_jax.data.examples import DataError, check_splits


def builder_config_of(data_cfg) -> DiffmicConfig:
  """The TFDS builder config (scheme, stored size, K, encoding) a `config.data` asks for.

  Its `num_classes` is the K this `config.data` trains with (image_folder: `data.num_classes`),
  which may differ from the listed config's; `builder_of` hands TFDS the listed config.
  """
  name, scheme = data_cfg.name, data_cfg.builder_config
  if name not in BUILDERS:
    raise DataError(f'data.name {name!r} is not one of {sorted(BUILDERS)}')
  if name in ('medmnist', 'demo'):
    scheme = 'retinamnist' if name == 'demo' else scheme
    k = medmnist.KNOWN_CLASSES.get(scheme, data_cfg.get('num_classes', -1))
    return DiffmicConfig(name=config_name(scheme, None), scheme=scheme, stored_size=None,
                         num_classes=k, encoding='png')
  module = resolvers.RESOLVERS[name]
  if scheme not in module.SCHEMES:
    raise DataError(f'data.builder_config {scheme!r} is not one of {module.SCHEMES} for {name}')
  size = int(data_cfg.get('stored_size', 224))
  k = module.NUM_CLASSES or int(data_cfg.get('num_classes', -1))
  return DiffmicConfig(name=config_name(scheme, size), scheme=scheme, stored_size=size,
                       num_classes=k, encoding='jpeg')


def _data_dir(data_cfg) -> str:
  path = os.path.expanduser(data_cfg.data_dir)
  return path if staging.is_remote(path) else os.path.abspath(path)


def _relative_dir(data_cfg) -> str:
  """`<name>/<config>/<version>`: where a build lives under a data dir."""
  return os.path.join(data_cfg.name, builder_config_of(data_cfg).name, VERSION)


def builder_of(data_cfg, data_dir: str | None = None, **kwargs) -> tfds.core.DatasetBuilder:
  """The TFDS builder for `config.data` (reads `dataset_info.json` when already built).

  Args:
    data_cfg: `config.data`.
    data_dir: Overrides `data.data_dir` (a remote one's local copy).
    **kwargs: Passed on to the builder (`resolved` splits for a build).
  """
  config = builder_config_of(data_cfg)  # Checks the name first.
  return BUILDERS[data_cfg.name](
      config=config, data_dir=data_dir or _data_dir(data_cfg), file_format='array_record',
      num_classes=config.num_classes, skip_bad=bool(data_cfg.get('skip_bad_examples', False)),
      **kwargs)


def manual_dir_of(data_cfg) -> str:
  if data_cfg.name == 'demo':
    return BUILDERS['demo'].DEMO_DIR
  if data_cfg.manual_dir:
    return os.path.abspath(os.path.expanduser(data_cfg.manual_dir))
  return os.path.join(_data_dir(data_cfg), 'downloads', 'manual', data_cfg.name)


def _is_built(builder) -> bool:
  return (epath.Path(builder.data_dir) / 'dataset_info.json').exists()  # Local or gs://.


def resolve_splits(data_cfg, skipped: list[str] | None = None):
  """Resolves and checks the splits `config.data` names, touching no pixel.

  Returns:
    `{split: [Example]}` after `check_splits` (bad rows raise, or are skipped and listed in
    `skipped` when `data.skip_bad_examples`).
  """
  cfg = builder_config_of(data_cfg)
  name = 'medmnist' if data_cfg.name == 'demo' else data_cfg.name
  splits = resolvers.RESOLVERS[name].resolve(manual_dir_of(data_cfg), cfg.scheme, cfg.num_classes)
  k = cfg.num_classes if cfg.num_classes > 0 else 1 + max(
      ex.label for part in splits.values() for ex in part)
  return check_splits(splits, k, skip_bad=bool(data_cfg.get('skip_bad_examples', False)),
                      skipped=skipped)


def prepare(data_cfg) -> None:
  """Builds the dataset `config.data` names into `data.data_dir` unless it is built already.

  Every cheap check runs before anything is written; image decoding errors stop the build
  inside TFDS's temporary folder, which is then removed. With `data.skip_bad_examples`, bad
  examples are skipped and listed in `skipped.txt` next to the built dataset.

  array_record's writer opens local files only, so a remote `data.data_dir` is built into this
  host's staging cache and uploaded from there, `dataset_info.json` last: a killed upload does not
  count as built, and the next `prepare` builds again.
  """
  builder = builder_of(data_cfg)
  if _is_built(builder):
    return
  url = _data_dir(data_cfg)
  if not staging.is_remote(url):
    _build(data_cfg, url)
    return
  root = staging.cache_dir(url)
  shutil.rmtree(os.path.join(root, _relative_dir(data_cfg)), ignore_errors=True)  # A stale copy.
  staging.upload(_build(data_cfg, root), os.fspath(builder.data_dir))


def _build(data_cfg, data_dir: str) -> str:
  """Builds into the local `data_dir`; returns the built folder."""
  skipped: list[str] = []
  splits = resolve_splits(data_cfg, skipped)
  builder = builder_of(data_cfg, data_dir=data_dir, resolved=splits)
  builder.skipped = skipped
  logging.info('Building %s/%s into %s', data_cfg.name, builder.builder_config.name,
               builder.data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir_of(data_cfg)))
  if builder.skipped:
    path = epath.Path(builder.data_dir) / 'skipped.txt'
    path.write_text('\n'.join(builder.skipped) + '\n')
    logging.warning('Skipped %d bad examples; listed in %s', len(builder.skipped), path)
  return os.fspath(builder.data_dir)


_BUILT: dict[tuple, tfds.core.DatasetBuilder] = {}


def _built_builder(data_cfg):
  """The builder of an already built dataset (cached: instantiating one reads JSON and logs).

  For a remote `data.data_dir`, the builder of this host's local copy, staged here.
  """
  cfg = builder_config_of(data_cfg)
  key = (_data_dir(data_cfg), data_cfg.name, cfg.name)
  if key not in _BUILT:
    builder = builder_of(data_cfg)
    if not _is_built(builder):
      raise DataError(f'{data_cfg.name}/{cfg.name} is not built in {builder.data_dir} (no '
                      'dataset_info.json); call diffmic_jax.data.prepare(config.data) first')
    _BUILT[key] = _staged(data_cfg, builder) if staging.is_remote(key[0]) else builder
  return _BUILT[key]


def _staged(data_cfg, remote: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
  """Copies a remote build to this host once (see `staging.py`); returns the local builder."""
  root = staging.cache_dir(_data_dir(data_cfg))
  shards = [f for split in remote.info.splits.values() for f in split.filenames]
  staging.download(os.fspath(remote.data_dir), os.path.join(root, _relative_dir(data_cfg)), shards)
  return builder_of(data_cfg, data_dir=root)


def data_source(data_cfg, split: str):
  """Random-access source over one split; records are dicts with the image still encoded."""
  return _built_builder(data_cfg).as_data_source(
      split, decoders={'image': tfds.decode.SkipDecoding()})


def num_examples(data_cfg, split: str) -> int:
  """Number of examples in a split (TFDS split syntax such as 'train+validation' works)."""
  return len(data_source(data_cfg, split))


@functools.lru_cache(maxsize=64)
def _labels(built_dir: str, split: str) -> np.ndarray:
  builder = tfds.builder_from_directory(built_dir)
  src = builder.as_data_source(split, decoders={'image': tfds.decode.SkipDecoding()})
  return np.asarray([r['label'] for r in src.__getitems__(range(len(src)))], np.int64)


def labels_of(data_cfg, split: str) -> np.ndarray:
  """All labels of a split, in source order (cached)."""
  return _labels(os.fspath(_built_builder(data_cfg).data_dir), split)


def num_classes_of(data_cfg) -> int:
  """K of the built dataset."""
  cfg = builder_config_of(data_cfg)
  if cfg.num_classes > 0:
    return cfg.num_classes
  return 1 + max(int(labels_of(data_cfg, s).max()) for s in ('train', 'validation', 'test')
                 if s in _built_builder(data_cfg).info.splits)


def class_counts(data_cfg, split: str) -> list[int]:
  """Examples per class in a split, length K."""
  labels = labels_of(data_cfg, split)
  return np.bincount(labels, minlength=num_classes_of(data_cfg)).tolist()
