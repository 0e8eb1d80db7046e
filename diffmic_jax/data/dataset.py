"""From `config.data` to where its build lives, and the random-access sources of that build.

A build lives at `<data_dir>/<source id>/<name>/<config>/<version>` (`source.py`): one per manual
directory, so two folders never share or replace a build. `num_examples`, `class_counts` and
`data_source` read what `builds.prepare` built; reading needs only the array_record files,
`dataset_info.json` and `source.json`, not the manual folder. A remote `data.data_dir` (gs://...)
is read from a copy each host stages once (`staging.py`): array_record opens local files only.
"""

import functools
import os

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from diffmic_jax.data import builders as resolvers
from diffmic_jax.data import source
from diffmic_jax.data import staging
from diffmic_jax.data.builders import medmnist
from diffmic_jax.data.builders.tfds_builders import BUILDERS, VERSION, DiffmicConfig, config_name
from diffmic_jax.data.examples import DataError


def builder_config_of(data_cfg) -> DiffmicConfig:
  """The TFDS builder config (scheme, stored size, K, encoding) a `config.data` asks for.

  Its `num_classes` is the dataset's fixed K, or -1 when the labels decide (image_folder, a
  MedMNIST file not in `KNOWN_CLASSES`).
  """
  name, scheme = data_cfg.name, data_cfg.builder_config
  if name not in BUILDERS:
    raise DataError(f'data.name {name!r} is not one of {sorted(BUILDERS)}')
  if name in ('medmnist', 'demo'):
    scheme = 'retinamnist' if name == 'demo' else scheme
    return DiffmicConfig(name=config_name(scheme, None), scheme=scheme, stored_size=None,
                         num_classes=medmnist.KNOWN_CLASSES.get(scheme, -1), encoding='png')
  module = resolvers.RESOLVERS[name]
  if scheme not in module.SCHEMES:
    raise DataError(f'data.builder_config {scheme!r} is not one of {module.SCHEMES} for {name}')
  size = int(data_cfg.stored_size)
  enc, resize = data_cfg.encoding, data_cfg.resize
  return DiffmicConfig(name=config_name(scheme, size, enc, resize), scheme=scheme,
                       stored_size=size, num_classes=module.NUM_CLASSES or -1, encoding=enc,
                       resize=resize)


def data_dir_of(data_cfg) -> str:
  path = os.path.expanduser(data_cfg.data_dir)
  return path if staging.is_remote(path) else os.path.abspath(path)


def version_dir(data_cfg) -> str:
  """`<name>/<config>/<version>`: where TFDS puts a build under its root."""
  return os.path.join(data_cfg.name, builder_config_of(data_cfg).name, VERSION)


def _builds(data_cfg) -> list[tuple[str, dict]]:
  """`(source id, record)` of every build of this name/config/version in `data.data_dir`."""
  root = epath.Path(data_dir_of(data_cfg))
  if not root.is_dir():
    return []
  found = []
  for entry in sorted(root.iterdir(), key=lambda p: p.name):
    folder = entry / version_dir(data_cfg)
    record = source.read(folder) if is_built(folder) else None
    if record is not None:
      found.append((entry.name, record))
  return found


def source_of(data_cfg) -> tuple[str, str]:
  """`(source id, manual directory)` of the build `config.data` reads and `prepare` makes.

  `data.manual_dir` names the source. Unset, the one build of this name/config in
  `data.data_dir` is used (several are refused), else TFDS's default manual directory.
  """
  if data_cfg.name == 'demo':
    return source.DEMO_ID, BUILDERS['demo'].DEMO_DIR
  if data_cfg.manual_dir:
    path = os.path.realpath(os.path.expanduser(data_cfg.manual_dir))  # A symlink: its target's.
    return source.source_id(path), path
  found = _builds(data_cfg)
  if len(found) > 1:
    listing = '; '.join(f"{sid}: {record['manual_dir']}" for sid, record in found)
    raise DataError(f'data.manual_dir is unset and {data_dir_of(data_cfg)} holds builds of '
                    f'{version_dir(data_cfg)} from {len(found)} sources ({listing}); set '
                    'data.manual_dir to the one to use')
  if found:
    return found[0][0], found[0][1]['manual_dir']
  path = os.path.join(data_dir_of(data_cfg), 'downloads', 'manual', data_cfg.name)
  return source.source_id(path), path


def build_dir(data_cfg) -> str:
  """Where the build of `config.data` lives: `<data_dir>/<source id>/<name>/<config>/<version>`."""
  return os.path.join(data_dir_of(data_cfg), source_of(data_cfg)[0], version_dir(data_cfg))


def builder_of(data_cfg, data_dir: str | None = None, **kwargs) -> tfds.core.DatasetBuilder:
  """The TFDS builder for `config.data` (reads `dataset_info.json` when already built).

  Args:
    data_cfg: `config.data`.
    data_dir: The TFDS root to use instead of `<data.data_dir>/<source id>` (a remote build's
      local copy).
    **kwargs: Passed on to the builder (`resolved` splits for a build).
  """
  config = builder_config_of(data_cfg)  # Checks the name first.
  if data_dir is None:
    data_dir = os.path.join(data_dir_of(data_cfg), source_of(data_cfg)[0])
  return BUILDERS[data_cfg.name](
      config=config, data_dir=data_dir, file_format='array_record',
      skip_bad=bool(data_cfg.get('skip_bad_examples', False)), **kwargs)


def manual_dir_of(data_cfg) -> str:
  """The manual directory (or MedMNIST file) a build of `config.data` reads."""
  return source_of(data_cfg)[1]


def is_built(folder) -> bool:
  return (epath.Path(folder) / 'dataset_info.json').exists()  # Local or gs://.


_BUILT: dict[tuple, tfds.core.DatasetBuilder] = {}


def _key(data_cfg) -> tuple:
  return (data_dir_of(data_cfg), data_cfg.name, builder_config_of(data_cfg).name,
          data_cfg.manual_dir or None)


def forget(data_cfg) -> None:
  """Drops what this process cached about the build `prepare` is about to replace."""
  _BUILT.pop(_key(data_cfg), None)
  _labels.cache_clear()


def _built_builder(data_cfg):
  """The builder of an already built dataset (cached: instantiating one reads JSON and logs).

  For a remote `data.data_dir`, the builder of this host's local copy, staged here.
  """
  key = _key(data_cfg)
  if key not in _BUILT:
    builder = builder_of(data_cfg)
    if not is_built(builder.data_dir):
      raise DataError(f'{data_cfg.name}/{builder.builder_config.name} of '
                      f'{manual_dir_of(data_cfg)} is not built in {builder.data_dir} (no '
                      'dataset_info.json); call diffmic_jax.data.prepare(config.data) first')
    _BUILT[key] = _staged(data_cfg, builder) if staging.is_remote(key[0]) else builder
  return _BUILT[key]


def _staged(data_cfg, remote: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
  """Copies a remote build to this host once (see `staging.py`); returns the local builder."""
  sid = source_of(data_cfg)[0]
  root = os.path.join(staging.cache_dir(data_dir_of(data_cfg)), sid)
  record = source.read(epath.Path(remote.data_dir)) or {}
  shards = [f for split in remote.info.splits.values() for f in split.filenames]
  staging.download(os.fspath(remote.data_dir), os.path.join(root, version_dir(data_cfg)), shards,
                   stamp=record.get('digest', ''))
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


def built_record(data_cfg) -> dict:
  """The source record stored with the build `config.data` reads (see `source.py`)."""
  folder = epath.Path(_built_builder(data_cfg).data_dir)
  record = source.read(folder)
  if record is None:
    raise DataError(f'{folder} has no {source.RECORD_NAME}; delete it and call '
                    'diffmic_jax.data.prepare(config.data) to rebuild it')
  return record


def num_classes_of(data_cfg) -> int:
  """K of the built dataset: the dataset's fixed K, else its labels' (recorded at build time)."""
  return built_record(data_cfg)['num_classes']


def class_counts(data_cfg, split: str) -> list[int]:
  """Examples per class in a split, length K."""
  labels = labels_of(data_cfg, split)
  return np.bincount(labels, minlength=num_classes_of(data_cfg)).tolist()
