"""Making the build of `config.data` current: resolve the source, check it, build or reuse.

`prepare` resolves the manual directory's splits (no pixel touched), checks them and the config's
`num_classes`, and compares their source record with the one stored beside the build: equal, the
build is reused; different, it is rebuilt beside the old one, which it then replaces, and the log
says what changed; absent, it is built. One job builds a source at a time (`locks.build_lock`);
another waits, then reuses its build. A remote `data.data_dir` (gs://...) is built on local disk
and uploaded (`staging.py`).
"""

import os
import shutil

from absl import logging
from etils import epath
import tensorflow_datasets as tfds

from diffmic_jax import locks
from diffmic_jax.data import dataset, source, staging
from diffmic_jax.data.builders import RESOLVERS
from diffmic_jax.data.dataset import builder_config_of, manual_dir_of
from diffmic_jax.data.examples import DataError, check_splits, class_count


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
  splits = RESOLVERS[name].resolve(manual_dir, cfg.scheme, k)
  return check_splits(splits, class_count(splits, k), skip_bad=bool(data_cfg.get('skip_bad_examples', False)),
                      skipped=skipped)


def _record_of(data_cfg, manual_dir: str, splits) -> dict:
  """The source record a build of these splits would store (see `source.py`)."""
  k = class_count(splits, builder_config_of(data_cfg).num_classes)
  return source.record(manual_dir, splits, k, {
      'skip_bad_examples': bool(data_cfg.get('skip_bad_examples', False)),
      'max_examples_per_split': None})


def prepare(data_cfg, num_classes: int | None = None) -> None:
  """Makes sure the build of `config.data`'s source is in `data.data_dir` and current.

  A build is reused only when its stored source record (`source.json`) matches the manual
  directory as it is now; a changed source (labels, images, split lists, build options) is
  rebuilt beside the old build and swapped in, logging what changed. Every cheap check runs
  before anything is written; image decoding errors stop the build beside the old one, which
  stays in use.
  With `data.skip_bad_examples`, bad examples are skipped and listed in `skipped.txt`.

  array_record's writer opens local files only, so a remote `data.data_dir` is built into this
  host's staging cache and uploaded from there, `dataset_info.json` last: a killed upload does not
  count as built, and the next `prepare` builds again.

  Args:
    data_cfg: `config.data`.
    num_classes: The config's K; None takes the dataset's (image_folder: the labels'). A K that
      disagrees with the dataset's or the labels' is refused, naming both.
  """
  sid, manual_dir = dataset.source_of(data_cfg)
  url = dataset.data_dir_of(data_cfg)
  folder = epath.Path(url, sid, dataset.version_dir(data_cfg))
  built = source.read(folder) if dataset.is_built(folder) else None
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
  with locks.build_lock(url, sid):
    # Another job may have built this source while this one waited for the lock.
    built = source.read(folder) if dataset.is_built(folder) else None
    if built is not None and built['digest'] == current['digest']:
      logging.info('Using the build in %s of %s, just made by another job', folder,
                   source.summary(built))
      return
    if dataset.is_built(folder):
      why = source.changes(built, current) if built else f'no {source.RECORD_NAME} in the build'
      logging.warning('%s changed since it was built into %s (%s); rebuilding', manual_dir, folder,
                      why)
    dataset.forget(data_cfg)
    _replace(data_cfg, sid, manual_dir, splits, skipped, current)
    dataset.forget(data_cfg)
    now = source.read(folder) if dataset.is_built(folder) else None
    if now is None or now['digest'] != current['digest']:
      raise DataError(f'{folder} does not hold the build just made (a job building the same '
                      'source elsewhere, or a data_dir this host cannot write?); check it and '
                      'run again')
  logging.info('Built %s into %s', source.summary(current), folder)


def _replace(data_cfg, sid: str, manual_dir: str, splits, skipped, record: dict) -> None:
  """Builds the source beside its old build, then swaps them; a remote one is built locally first.

  Until the swap the old build stays whole and in use: a failed or killed rebuild leaves it as it
  was (and the next `prepare` tries again). Leftovers of killed builds are removed first; the
  caller holds the build lock, so none of them is another job's work in progress.
  """
  url = dataset.data_dir_of(data_cfg)
  folder = epath.Path(url, sid, dataset.version_dir(data_cfg))
  if not staging.is_remote(url):
    root = os.path.join(url, sid)
    os.makedirs(root, exist_ok=True)
    for leftover in os.listdir(root):
      if leftover.startswith(('.building-', '.replaced-')):
        shutil.rmtree(os.path.join(root, leftover))
    beside = os.path.join(root, f'.building-{os.getpid()}')
    try:
      new = _build(data_cfg, beside, manual_dir, splits, skipped, record)
      _swap(new, os.fspath(folder), os.path.join(root, f'.replaced-{os.getpid()}'))
    finally:
      shutil.rmtree(beside, ignore_errors=True)  # What a failed build left; empty after a swap.
    return
  local = os.path.join(staging.cache_dir(url), sid)
  shutil.rmtree(os.path.join(local, dataset.version_dir(data_cfg)), ignore_errors=True)
  if folder.exists():
    folder.rmtree()  # Shards of the old build would outlive a rebuild with fewer of them.
  staging.upload(_build(data_cfg, local, manual_dir, splits, skipped, record), os.fspath(folder),
                 stamp=record['digest'])


def _swap(new: str, folder: str, old: str) -> None:
  """Moves the finished build `new` to `folder` (same file system: renames), the old one aside
  to `old` and then deleted; a delete that fails leaves a warning, not the old build in use."""
  if os.path.exists(folder):
    os.rename(folder, old)
  os.makedirs(os.path.dirname(folder), exist_ok=True)
  os.rename(new, folder)
  if os.path.exists(old):
    failed = []
    shutil.rmtree(old, onerror=lambda func, path, exc: failed.append(path))
    if failed:
      logging.warning('could not delete the replaced build %s (%s): delete it by hand', old,
                      failed[0])


def _build(data_cfg, root: str, manual_dir: str, splits, skipped: list[str], record: dict) -> str:
  """Builds the resolved `splits` under the local TFDS root `root`, storing their source `record`;
  returns the built folder."""
  builder = dataset.builder_of(data_cfg, data_dir=root, resolved=splits, manual_path=manual_dir,
                               source_record=record)
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


def check_num_classes(data_cfg, num_classes: int | None) -> int:
  """The K to train with: the built dataset's; a config `num_classes` that differs is refused."""
  return _reconcile_k(data_cfg, dataset.built_record(data_cfg), num_classes)
