"""A local Google Cloud Storage server for tests: gcp-storage-emulator, in memory, plus one header.

    python tests/gcs_emulator.py PORT BUCKET

Real GCS sends `x-goog-generation` with every object download, and TensorStore (Orbax's array
writer) reads the object's generation from it to make conditional writes; without it every
checkpoint save fails with "Malformed StorageGeneration". gcp-storage-emulator omits the header,
so this script adds it from the object's own metadata before starting the emulator unchanged.
Prints 'ready' once it accepts requests.
"""

import sys
import time

from gcp_storage_emulator import server
from gcp_storage_emulator.handlers import objects

_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
  _download(request, response, storage, *args, **kwargs)
  try:
    obj = storage.get_file_obj(request.params['bucket_name'], request.params['object_id'])
  except Exception:  # Not found: the original handler has set the status.
    return
  response['x-goog-generation'] = str(obj['generation'])
  response['x-goog-metageneration'] = str(obj['metageneration'])


def main(port: int, bucket: str) -> None:
  objects.download = _download_with_generation  # objects.get(alt=media) calls it by this name.
  server.HANDLERS = tuple(
      (regex, {m: _download_with_generation if h is _download else h for m, h in handlers.items()})
      for regex, handlers in server.HANDLERS)
  emulator = server.create_server('127.0.0.1', port, in_memory=True, default_bucket=bucket)
  emulator.start()
  print('ready', flush=True)
  try:
    while True:
      time.sleep(1)
  finally:
    emulator.stop()


if __name__ == '__main__':
  main(int(sys.argv[1]), sys.argv[2])
