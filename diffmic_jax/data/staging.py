"""Moves a built dataset folder between a remote `data.data_dir` (gs://...) and this host's disk.

array_record's reader and writer open local files only, so grain cannot read a build in a bucket
and TFDS cannot write one there. A remote build is therefore read from a local copy that every
host stages for itself (`download`, once: each host has its own disk), and built on local disk
then sent up (`upload`, `dataset_info.json` last, since that file is what makes a build count as
built). A local copy counts as complete only when its marker, written after every file, lists the
same files and sizes as the remote folder: a killed copy is redone, a rebuilt remote is fetched
again, and so is a copy whose stamp (the build's source digest) differs from the remote's.
"""

import json
import os
import pathlib
import re

from absl import logging
from etils import epath

from diffmic_jax.data.examples import DataError

MARKER = '.diffmic_staged.json'
_INFO = 'dataset_info.json'


def is_remote(path: str) -> bool:
  return '://' in os.fspath(path)


def cache_dir(url: str) -> str:
  """This host's copy of the data dir `url`: `$DIFFMIC_DATA_CACHE/<scheme>/<bucket>/<path>`.

  The default root is `~/.cache/diffmic_jax`; the URL's parts keep copies of different buckets
  and folders apart.
  """
  root = os.environ.get('DIFFMIC_DATA_CACHE') or '~/.cache/diffmic_jax'
  parts = [re.sub(r'[^\w.-]', '_', p) for p in url.replace('://', '/').split('/')
           if p not in ('', '.', '..')]
  return os.path.join(os.path.abspath(os.path.expanduser(root)), *parts)


def _listing(folder: epath.Path, prefix: str = '') -> dict[str, int]:
  """`{relative path: size}` of every file under `folder`, the marker left out."""
  files = {}
  for path in folder.iterdir():  # Not walk(): on gs:// it yields paths without the gs://.
    if path.is_dir():
      files.update(_listing(path, f'{prefix}{path.name}/'))
    elif path.name != MARKER:
      files[prefix + path.name] = path.stat().length
  return files


def _is_complete(local: pathlib.Path, url: str, listing: dict[str, int], stamp: str) -> bool:
  try:
    marker = json.loads((local / MARKER).read_text())
  except (OSError, ValueError):
    return False
  return marker.get('source') == url and marker.get('stamp', '') == stamp and marker.get(
      'files') == listing and all(
      (local / rel).is_file() and (local / rel).stat().st_size == size
      for rel, size in listing.items())


def _write_marker(local: pathlib.Path, url: str, listing: dict[str, int], stamp: str) -> None:
  tmp = local / f'{MARKER}.{os.getpid()}.tmp'
  tmp.write_text(json.dumps({'source': url, 'stamp': stamp, 'files': listing}, indent=1,
                            sort_keys=True))
  os.replace(tmp, local / MARKER)


def _fetch(url: str, rel: str, size: int, local: pathlib.Path) -> None:
  """Copies one file under a temporary name, then renames it: no half file under its own name.

  Several processes on one host may stage at once; each writes its own temporary file.
  """
  dst = local / rel
  dst.parent.mkdir(parents=True, exist_ok=True)
  tmp = dst.with_name(f'.{dst.name}.{os.getpid()}.tmp')
  try:
    epath.Path(url, rel).copy(tmp, overwrite=True)
  except FileNotFoundError as e:
    raise DataError(f'{url}: {rel} disappeared while it was copied to {local} ({e})') from e
  got = tmp.stat().st_size
  if got != size:
    tmp.unlink()
    raise DataError(f'{url}: {rel} has {got} bytes, not the {size} listed; was it rebuilt '
                    'during the copy?')
  os.replace(tmp, dst)


def download(url: str, local: str, required: list[str] = (), stamp: str = '') -> None:
  """Copies the remote folder `url` to `local` unless a complete copy is there already.

  Args:
    url: A built dataset folder, `<data_dir>/<source id>/<name>/<config>/<version>`.
    local: Where this host keeps its copy (created).
    required: Files the folder must hold (the shards `dataset_info.json` names); a missing one
      raises `DataError` naming it and `url`, before anything is copied.
    stamp: What identifies the remote build's content (its source digest): a rebuild from a
      changed source can leave every file size as it was.
  """
  local = pathlib.Path(local)
  listing = _listing(epath.Path(url))
  for rel in [_INFO, *required]:
    if rel not in listing:
      raise DataError(f'{url} has no {rel}: an incomplete build or upload; build it again with '
                      'diffmic_jax.data.prepare(config.data)')
  if _is_complete(local, url, listing, stamp):
    return
  logging.info('Copying %s (%d files, %.1f MB) to %s', url, len(listing),
               sum(listing.values()) / 2**20, local)
  (local / MARKER).unlink(missing_ok=True)
  for rel, size in sorted(listing.items()):
    _fetch(url, rel, size, local)
  _write_marker(local, url, listing, stamp)


def upload(local: str, url: str, stamp: str = '') -> None:
  """Sends the built folder `local` to `url`, `dataset_info.json` last; `local` becomes its copy."""
  local = pathlib.Path(local)
  listing = _listing(epath.Path(local))
  logging.info('Uploading %s (%d files, %.1f MB) to %s', local, len(listing),
               sum(listing.values()) / 2**20, url)
  for rel in sorted(listing, key=lambda rel: (rel == _INFO, rel)):
    epath.Path(local, rel).copy(epath.Path(url, rel), overwrite=True)
  _write_marker(local, url, listing, stamp)
