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
from diffmic_jax.data import source
from diffmic_jax.data import staging
from diffmic_jax.data.builders import medmnist
from diffmic_jax.data.builders.tfds_builders import BUILDERS, VERSION, DiffmicConfig, config_name
from diffmic_jax.data.examples import DataError, check_splits


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
  return DiffmicConfig(name=config_name(scheme, size), scheme=scheme, stored_size=size,
                       num_classes=module.NUM_CLASSES or -1, encoding='jpeg')


def _data_dir(data_cfg) -> str:
  path = os.path.expanduser(data_cfg.data_dir)
  return path if staging.is_remote(path) else os.path.abspath(path)


def _version_dir(data_cfg) -> str:
  """`<name>/<config>/<version>`: where TFDS puts a build under its root."""
  return os.path.join(data_cfg.name, builder_config_of(data_cfg).name, VERSION)


def _builds(data_cfg) -> list[tuple[str, dict]]:
  """`(source id, record)` of every build of this name/config/version in `data.data_dir`."""
  root = epath.Path(_data_dir(data_cfg))
  if not root.is_dir():
    return []
  found = []
  for entry in sorted(root.iterdir(), key=lambda p: p.name):
    folder = entry / _version_dir(data_cfg)
    record = source.read(folder) if _is_built(folder) else None
    if record is not None:
      found.append((entry.name, record))
  return found


def _source(data_cfg) -> tuple[str, str]:
  """`(source id, manual directory)` of the build `config.data` reads and `prepare` makes.

  `data.manual_dir` names the source. Unset, the one build of this name/config in
  `data.data_dir` is used (several are refused), else TFDS's default manual directory.
  """
  if data_cfg.name == 'demo':
    return source.DEMO_ID, BUILDERS['demo'].DEMO_DIR
  if data_cfg.manual_dir:
    path = os.path.abspath(os.path.expanduser(data_cfg.manual_dir))
    return source.source_id(path), path
  found = _builds(data_cfg)
  if len(found) > 1:
    listing = '; '.join(f"{sid}: {record['manual_dir']}" for sid, record in found)
    raise DataError(f'data.manual_dir is unset and {_data_dir(data_cfg)} holds builds of '
                    f'{_version_dir(data_cfg)} from {len(found)} sources ({listing}); set '
                    'data.manual_dir to the one to use')
  if found:
    return found[0][0], found[0][1]['manual_dir']
  path = os.path.join(_data_dir(data_cfg), 'downloads', 'manual', data_cfg.name)
  return source.source_id(path), path


def build_dir(data_cfg) -> str:
  """Where the build of `config.data` lives: `<data_dir>/<source id>/<name>/<config>/<version>`."""
  return os.path.join(_data_dir(data_cfg), _source(data_cfg)[0], _version_dir(data_cfg))


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
    data_dir = os.path.join(_data_dir(data_cfg), _source(data_cfg)[0])
  return BUILDERS[data_cfg.name](
      config=config, data_dir=data_dir, file_format='array_record',
      skip_bad=bool(data_cfg.get('skip_bad_examples', False)), **kwargs)


def manual_dir_of(data_cfg) -> str:
  """The manual directory (or MedMNIST file) a build of `config.data` reads."""
  return _source(data_cfg)[1]


def _is_built(folder) -> bool:
  return (epath.Path(folder) / 'dataset_info.json').exists()  # Local or gs://.


def _check_k(data_cfg, num_classes: int | None) -> int:
  """The K labels are checked against: the dataset's fixed K, else `num_classes`, else -1."""
  fixed = builder_config_of(data_cfg).num_classes
  if num_classes is not None and fixed > 0 and num_classes != fixed:
    raise DataError(f'num_classes is {num_classes} but {data_cfg.name} '
                    f'({builder_config_of(data_cfg).name}) has {fixed} classes; set '
                    f'num_classes = {fixed} (or None)')
  return fixed if fixed > 0 else (num_classes or -1)


def _reconcile_k(data_cfg, record: dict, num_classes: int | None) -> int:
  """The K to train with, given a build's record: `num_classes` if it fits, else refused.

  A K below the labels found is refused, naming both; a K above them (an image folder that lacks
  its last classes) is kept with a warning.
  """
  found = record['num_classes']
  if num_classes is None:
    return found
  _check_k(data_cfg, num_classes)
  if num_classes < found:
    raise DataError(f"num_classes is {num_classes} but the labels of {record['manual_dir']} span "
                    f'{found} classes (0..{found - 1}); set num_classes = {found} (or None to '
                    'infer it)')
  if num_classes > found:
    logging.warning('num_classes is %d but the labels of %s span %d classes: classes %d..%d have '
                    'no examples', num_classes, record['manual_dir'], found, found,
                    num_classes - 1)
  return num_classes


def resolve_splits(data_cfg, skipped: list[str] | None = None, num_classes: int | None = None):
  """Resolves and checks the splits `config.data` names, touching no pixel.

  Args:
    data_cfg: `config.data`.
    skipped: Collects the bad rows skipped when `data.skip_bad_examples`.
    num_classes: The config's K (None: the dataset's, or the labels'); a label outside [0, K)
      is refused, naming its row.

  Returns:
    `{split: [Example]}` after `check_splits` (bad rows raise, or are skipped and listed in
    `skipped` when `data.skip_bad_examples`).
  """
  return _resolve(data_cfg, manual_dir_of(data_cfg), skipped, num_classes)


def _resolve(data_cfg, manual_dir: str, skipped: list[str] | None, num_classes: int | None):
  cfg = builder_config_of(data_cfg)
  k = _check_k(data_cfg, num_classes)
  name = 'medmnist' if data_cfg.name == 'demo' else data_cfg.name
  splits = resolvers.RESOLVERS[name].resolve(manual_dir, cfg.scheme, k)
  return check_splits(splits, k if k > 0 else 1 + max(
      ex.label for part in splits.values() for ex in part),
                      skip_bad=bool(data_cfg.get('skip_bad_examples', False)), skipped=skipped)


def _record_of(data_cfg, manual_dir: str, splits) -> dict:
  """The source record a build of these splits would store (see `source.py`)."""
  k = builder_config_of(data_cfg).num_classes
  k = k if k > 0 else 1 + max(ex.label for part in splits.values() for ex in part)
  return source.record(manual_dir, splits, k, {
      'skip_bad_examples': bool(data_cfg.get('skip_bad_examples', False)),
      'max_examples_per_split': None})


def prepare(data_cfg, num_classes: int | None = None) -> None:
  """Makes sure the build of `config.data`'s source is in `data.data_dir` and current.

  A build is reused only when its stored source record (`source.json`) matches the manual
  directory as it is now; a changed source (labels, images, split lists, build options) is
  rebuilt in place, logging what changed. Every cheap check runs before anything is written;
  image decoding errors stop the build inside TFDS's temporary folder, which is then removed.
  With `data.skip_bad_examples`, bad examples are skipped and listed in `skipped.txt`.

  array_record's writer opens local files only, so a remote `data.data_dir` is built into this
  host's staging cache and uploaded from there, `dataset_info.json` last: a killed upload does not
  count as built, and the next `prepare` builds again.

  Args:
    data_cfg: `config.data`.
    num_classes: The config's K; None takes the dataset's (image_folder: the labels'). A K that
      disagrees with the dataset's or the labels' is refused, naming both.
  """
  sid, manual_dir = _source(data_cfg)
  url = _data_dir(data_cfg)
  folder = epath.Path(url, sid, _version_dir(data_cfg))
  built = source.read(folder) if _is_built(folder) else None
  if built is not None and not os.path.exists(manual_dir):
    _reconcile_k(data_cfg, built, num_classes)
    logging.info('Using the build in %s of %s (not checked: %s is not on this host)', folder,
                 source.summary(built), manual_dir)
    return
  skipped: list[str] = []
  splits = _resolve(data_cfg, manual_dir, skipped, num_classes)
  current = _record_of(data_cfg, manual_dir, splits)
  _reconcile_k(data_cfg, current, num_classes)
  if built is not None and built['digest'] == current['digest']:
    logging.info('Using the build in %s of %s', folder, source.summary(built))
    return
  if _is_built(folder):
    logging.warning('%s changed since it was built into %s (%s); rebuilding', manual_dir, folder,
                    source.changes(built or {}, current))
  _forget(data_cfg)
  if staging.is_remote(url):
    local = staging.cache_dir(url)
    shutil.rmtree(os.path.join(local, sid, _version_dir(data_cfg)), ignore_errors=True)
    if folder.exists():
      folder.rmtree()
    built_dir = _build(data_cfg, os.path.join(local, sid), manual_dir, splits, skipped)
    staging.upload(built_dir, os.fspath(folder), stamp=current['digest'])
  else:
    shutil.rmtree(folder, ignore_errors=True)
    _build(data_cfg, os.path.join(url, sid), manual_dir, splits, skipped)
  logging.info('Built %s into %s', source.summary(current), folder)


def _build(data_cfg, root: str, manual_dir: str, splits, skipped: list[str]) -> str:
  """Builds the resolved `splits` under the local TFDS root `root`; returns the built folder."""
  builder = builder_of(data_cfg, data_dir=root, resolved=splits, manual_path=manual_dir)
  builder.skipped = skipped
  logging.info('Building %s/%s into %s', data_cfg.name, builder.builder_config.name,
               builder.data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir))
  if builder.skipped:
    path = epath.Path(builder.data_dir) / 'skipped.txt'
    path.write_text('\n'.join(builder.skipped) + '\n')
    logging.warning('Skipped %d bad examples; listed in %s', len(builder.skipped), path)
  return os.fspath(builder.data_dir)


_BUILT: dict[tuple, tfds.core.DatasetBuilder] = {}


def _key(data_cfg) -> tuple:
  return (_data_dir(data_cfg), data_cfg.name, builder_config_of(data_cfg).name,
          data_cfg.manual_dir or None)


def _forget(data_cfg) -> None:
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
    if not _is_built(builder.data_dir):
      raise DataError(f'{data_cfg.name}/{builder.builder_config.name} of '
                      f'{manual_dir_of(data_cfg)} is not built in {builder.data_dir} (no '
                      'dataset_info.json); call diffmic_jax.data.prepare(config.data) first')
    _BUILT[key] = _staged(data_cfg, builder) if staging.is_remote(key[0]) else builder
  return _BUILT[key]


def _staged(data_cfg, remote: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
  """Copies a remote build to this host once (see `staging.py`); returns the local builder."""
  sid = _source(data_cfg)[0]
  root = os.path.join(staging.cache_dir(_data_dir(data_cfg)), sid)
  record = source.read(epath.Path(remote.data_dir)) or {}
  shards = [f for split in remote.info.splits.values() for f in split.filenames]
  staging.download(os.fspath(remote.data_dir), os.path.join(root, _version_dir(data_cfg)), shards,
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


def _built_record(data_cfg) -> dict:
  folder = epath.Path(_built_builder(data_cfg).data_dir)
  record = source.read(folder)
  if record is None:
    raise DataError(f'{folder} has no {source.RECORD_NAME}; delete it and call '
                    'diffmic_jax.data.prepare(config.data) to rebuild it')
  return record


def num_classes_of(data_cfg) -> int:
  """K of the built dataset: the dataset's fixed K, else its labels' (recorded at build time)."""
  return _built_record(data_cfg)['num_classes']


def check_num_classes(data_cfg, num_classes: int | None) -> int:
  """The K to train with: the built dataset's; a config `num_classes` that differs is refused."""
  return _reconcile_k(data_cfg, _built_record(data_cfg), num_classes)


def class_counts(data_cfg, split: str) -> list[int]:
  """Examples per class in a split, length K."""
  labels = labels_of(data_cfg, split)
  return np.bincount(labels, minlength=num_classes_of(data_cfg)).tolist()
