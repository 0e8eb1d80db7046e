"""Images/s of the training input pipeline at 224 px on real APTOS images, 0 and 2 workers.

The train step must never wait for data; this measures how much headroom the pipeline has.
It builds APTOS 2019 (DiffMIC split, stored at 224 px) from the shared data folder once, then
times `make_train_iterator` (decode + flips + rotation, uint8 batches of 32) after a warm-up:

    python bench/input_pipeline.py [--data_root ../shared/data] [--batches 40]

Prints a table and writes bench/results/input_pipeline.json.
"""

import importlib.util
import json
import os
import pathlib
import platform
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]


def _default_config():
  spec = importlib.util.spec_from_file_location('_default_config', REPO / 'configs' / 'default.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def measure(cfg, *, batches: int, warmup: int, batch_size: int, image_size: int) -> dict:
  """Times `batches` batches after `warmup` ones; returns img/s and the start-up time."""
  from diffmic_jax import data  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  it = data.make_train_iterator(cfg, image_size=image_size, global_batch_size=batch_size, seed=0)
  for _ in range(warmup):
    next(it)
  startup = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(it)
  elapsed = time.perf_counter() - start
  assert batch['image'].shape == (batch_size, image_size, image_size, 3)
  return {'num_workers': cfg.num_workers, 'read_threads': cfg.read_threads,
          'images_per_s': batches * batch_size / elapsed, 'startup_s': startup,
          'images': batches * batch_size}


def main(argv):
  del argv
  args = flags.FLAGS
  from diffmic_jax import data  # pylint: disable=g-import-not-at-top

  cfg = _default_config().data
  cfg.name, cfg.builder_config = 'aptos2019', 'diffmic'
  cfg.manual_dir = os.path.join(args.data_root, 'aptos2019_224')
  cfg.data_dir = args.data_dir
  start = time.perf_counter()
  data.prepare(cfg)
  build_s = time.perf_counter() - start
  rows = []
  for workers, threads in ((0, 1), (0, 4), (2, 1), (2, 2)):
    cfg.num_workers, cfg.read_threads = workers, threads
    rows.append(measure(cfg, batches=args.batches, warmup=args.warmup,
                        batch_size=args.batch_size, image_size=args.image_size))
  print(f'APTOS 2019 train split ({data.num_examples(cfg, "train")} images, stored 224 px), '
        f'batch {args.batch_size}, {args.image_size} px, augmented, uint8 out; '
        f'prepare() took {build_s:.1f} s (0 if already built)')
  print(f'{"workers":>8} {"threads":>8} {"img/s":>8} {"startup s":>10}')
  for r in rows:
    print(f'{r["num_workers"]:>8} {r["read_threads"]:>8} {r["images_per_s"]:>8.1f} '
          f'{r["startup_s"]:>10.2f}')
  result = {'benchmark': 'input_pipeline', 'dataset': 'aptos2019/diffmic_224',
            'batch_size': args.batch_size, 'image_size': args.image_size,
            'cpu_count': os.cpu_count(), 'machine': platform.processor() or platform.machine(),
            'prepare_s': build_s, 'results': rows}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=2)
  print(f'wrote {args.out}')


def _define_flags():
  flags.DEFINE_string('data_root', os.environ.get('DIFFMIC_DATA_ROOT', str(REPO.parent / 'shared' / 'data')),
                      'Folder holding aptos2019_224/.')
  flags.DEFINE_string('data_dir', '/tmp/diffmic_bench_tfds', 'Where the dataset is built.')
  flags.DEFINE_integer('batches', 40, 'Timed batches per setting.')
  flags.DEFINE_integer('warmup', 3, 'Untimed batches first.')
  flags.DEFINE_integer('batch_size', 32, 'Batch size.')
  flags.DEFINE_integer('image_size', 224, 'Side of the images read.')
  flags.DEFINE_string('out', str(REPO / 'bench' / 'results' / 'input_pipeline.json'), 'JSON path.')

if __name__ == '__main__':
  _define_flags()
  app.run(main)
