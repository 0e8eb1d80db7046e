"""Entry point: `python -m diffmic_jax.main --config=configs/aptos.py --workdir=DIR [--mode=...]`.

Kept short on purpose: flags, multi-host start-up, logging, one call. The logic lives in
importable, tested modules (train.py, evaluate.py). The same command runs on every worker of a
TPU slice or GPU cluster (see launch/).

Modes:
  prepare   build the dataset into config.data.data_dir and stop (once, before a multi-host job)
  train     train (resuming from DIR if it holds checkpoints), then evaluate the
            validation-chosen checkpoint on config.eval.splits
  evaluate  restore a checkpoint (--checkpoint=best|latest|STEP) and evaluate config.eval.splits
  predict   per-image probabilities and uncertainty for a built --split or for --input (a folder
            of images or a CSV of files) as CSV (+ saliency maps if config.eval.save_saliency)

Evaluate and predict without --config use the config the run saved (diffmic_jax/run_config.py)
and write to <output_dir or workdir>/{eval,predict}/step_<N>/<source>/.
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
flags.DEFINE_string('split', None, "predict: a built split to predict ('test' without --input).")
flags.DEFINE_string('input', None, 'predict: a folder of images or a CSV of files (column file, '
                    'optional label, id); needs no dataset build.')
flags.DEFINE_string('output_dir', None, 'evaluate/predict: where eval/ and predict/ go (default: '
                    '--workdir, which may then be read-only).')
flags.DEFINE_enum('distributed', 'auto', ['auto', 'on', 'off'],
                  "Multi-process JAX: 'auto' starts it when $DIFFMIC_DISTRIBUTED=1 or a "
                  'coordinator is given.')
flags.DEFINE_string('coordinator_address', '', 'host:port of process 0 (not needed on Cloud TPU).')
flags.DEFINE_integer('num_processes', 0, 'Process count (0: from the environment).')
flags.DEFINE_integer('process_id', -1, 'This process (-1: from the environment).')
flags.mark_flags_as_required(['workdir'])


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
  from diffmic_jax import checkpoint, data, evaluate, run_config, train

  if jax.process_index() != 0:  # One log per job: the other processes say only what goes wrong.
    logging.set_verbosity(logging.WARNING)
  config, workdir, mode = flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.mode
  if config is None:
    raise app.UsageError(f'--mode={mode} needs --config')
  if mode != 'predict' and (flags.FLAGS.input or flags.FLAGS.split):
    raise app.UsageError('--input and --split are for --mode=predict')
  if run_config.is_saved_config(config_flags.get_config_filename(flags.FLAGS['config'])):
    run_config.check_overrides(config_flags.get_override_values(flags.FLAGS['config']))
  if mode == 'train':
    checkpoint.check_workdir(config, workdir)  # A refused resume writes nothing.
  from_files = mode == 'predict' and flags.FLAGS.input is not None
  if jax.process_index() == 0:
    if mode in ('prepare', 'train'):  # Evaluate and predict write only their own folders.
      out = epath.Path(workdir)  # Local, or gs:// through gcsfs.
      out.mkdir(parents=True, exist_ok=True)
      (out / f'config_{mode}.json').write_text(config.to_json_best_effort(indent=2))
    if not from_files:
      data.prepare(config.data)  # Builds the TFDS dataset once; other processes wait below.
  distributed.sync('prepared')
  logging.info('config:\n%s', config)
  if flags.FLAGS.mode == 'prepare':
    return
  if flags.FLAGS.mode == 'train':
    results = train.train_and_evaluate(config, workdir)
  elif flags.FLAGS.mode == 'evaluate':
    results = evaluate.evaluate_checkpoint(config, workdir, flags.FLAGS.checkpoint,
                                           flags.FLAGS.output_dir)
  else:
    split = flags.FLAGS.split or (None if from_files else 'test')
    results = evaluate.predict(config, workdir, flags.FLAGS.checkpoint, split=split,
                               input_path=flags.FLAGS.input, output_dir=flags.FLAGS.output_dir)
    if jax.process_index() == 0:
      logging.info('done: %s', json.dumps(results))  # Where the CSV went, how many rows.
    return
  if jax.process_index() == 0:
    logging.info('done: %s', json.dumps({k: v.get('diffusion', {}).get('accuracy')
                                          if isinstance(v, dict) else v for k, v in results.items()}))


def _parse_flags(argv):
  from diffmic_jax import run_config  # Evaluate / predict default to the run's saved config.
  try:
    argv = run_config.with_saved_config(argv)
  except ValueError as e:
    raise SystemExit(f'error: {e}') from None
  return app.parse_flags_with_usage(argv)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
