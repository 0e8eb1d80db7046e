"""Entry point: `python -m diffmic_jax.main --config=configs/aptos.py --workdir=DIR [--mode=...]`.

Kept short on purpose: flags, multi-host start-up, logging, one call. The logic lives in
importable, tested modules (train.py, inference.py). The same command runs on every worker of a
TPU slice or GPU cluster (see launch/).

Modes:
  prepare   build the dataset into config.data.data_dir and stop (once, before a multi-host job)
  train     train (resuming from DIR if it holds checkpoints), then evaluate the
            validation-chosen checkpoint on config.eval.splits
  evaluate  restore a checkpoint (--checkpoint=best|latest|STEP) and evaluate config.eval.splits
  predict   per-image probabilities and uncertainty for --split as CSV (+ saliency maps if
            config.eval.save_saliency)
"""

from diffmic_jax import host_memory

host_memory.keep_freed_memory()  # First: re-executes this process once (host_memory.py).

import json  # noqa: E402
import logging as std_logging  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from etils import epath  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py[:arg]).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, metrics and reports go here: a local '
                    'path or a URL such as gs://bucket/run (needs gcsfs).')
flags.DEFINE_enum('mode', 'train', ['prepare', 'train', 'evaluate', 'predict'], 'What to do.')
flags.DEFINE_string('checkpoint', 'best', "evaluate/predict: 'best', 'latest' or a step number.")
flags.DEFINE_string('split', 'test', 'predict: the split to predict.')
flags.DEFINE_enum('distributed', 'auto', ['auto', 'on', 'off'],
                  "Multi-process JAX: 'auto' starts it when $DIFFMIC_DISTRIBUTED=1 or a "
                  'coordinator is given.')
flags.DEFINE_string('coordinator_address', '', 'host:port of process 0 (not needed on Cloud TPU).')
flags.DEFINE_integer('num_processes', 0, 'Process count (0: from the environment).')
flags.DEFINE_integer('process_id', -1, 'This process (-1: from the environment).')
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries(std_logging.Filter):
  """Orbax, TFDS and gcsfs log each save and read at INFO; keep their warnings, drop the rest."""

  def filter(self, record):
    noisy = ('/orbax/', '/tensorflow_datasets/', '/etils/', '/grain/', '/gcsfs/')
    return record.levelno >= std_logging.WARNING or not any(n in record.pathname for n in noisy)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  for handler in std_logging.getLogger().handlers:
    handler.addFilter(_QuietLibraries())
  from diffmic_jax import distributed  # Imports JAX: after flags, before any device use.
  distributed.initialize(flags.FLAGS.distributed, flags.FLAGS.coordinator_address,
                         flags.FLAGS.num_processes, flags.FLAGS.process_id)
  import jax
  from diffmic_jax import data, inference, train

  if jax.process_index() != 0:  # One log per job: the other processes say only what goes wrong.
    logging.set_verbosity(logging.WARNING)
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  if jax.process_index() == 0:
    out = epath.Path(workdir)  # Local, or gs:// through gcsfs.
    out.mkdir(parents=True, exist_ok=True)
    (out / f'config_{flags.FLAGS.mode}.json').write_text(config.to_json_best_effort(indent=2))
    data.prepare(config.data, config.num_classes)  # Builds once per source; others wait below.
  inference.sync('prepared')
  config.num_classes = data.check_num_classes(config.data, config.num_classes)  # None: the data's.
  logging.info('config:\n%s', config)
  if flags.FLAGS.mode == 'prepare':
    return
  if flags.FLAGS.mode == 'train':
    results = train.train_and_evaluate(config, workdir)
  elif flags.FLAGS.mode == 'evaluate':
    results = inference.evaluate_checkpoint(config, workdir, flags.FLAGS.checkpoint)
  else:
    results = inference.predict(config, workdir, flags.FLAGS.split, flags.FLAGS.checkpoint)
    if jax.process_index() == 0:
      logging.info('done: %s', json.dumps(results))  # Where the CSV went, how many rows.
    return
  if jax.process_index() == 0:
    logging.info('done: %s', json.dumps({k: v.get('diffusion', {}).get('accuracy')
                                          if isinstance(v, dict) else v for k, v in results.items()}))


if __name__ == '__main__':
  app.run(main)
