"""Entry point: `python -m diffmic_jax.main --config=configs/aptos.py --workdir=DIR [--mode=...]`.

Kept short on purpose: flags, start-up checks, logging, multi-host start-up, one call. The logic
lives in importable, tested modules (train.py, evaluate.py). The same command runs on every worker
of a TPU slice or GPU cluster (see launch/).

Modes:
  prepare   build the dataset into config.data.data_dir and stop (once, before a multi-host job)
  train     train (resuming from DIR if it holds checkpoints), then evaluate the
            validation-chosen checkpoint on config.eval.splits
  evaluate  restore a checkpoint (--checkpoint=best|latest|STEP) and evaluate config.eval.splits
  predict   per-image probabilities and uncertainty for a built --split or for --input (a folder
            of images or a CSV of files) as CSV (+ saliency maps if config.eval.save_saliency)

Evaluate and predict without --config use the config the run saved (diffmic_jax/run_config.py)
and write to <output_dir or workdir>/{eval,predict}/step_<N>/<source>/.

A user error (bad flag, config value, missing file, ...) prints one line and exits with status 2
before anything is written; `--debug` shows its traceback.
"""

import contextlib
import json

from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from diffmic_jax import console, errors, host_memory, locks

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
flags.DEFINE_bool('debug', False, 'Show the traceback of user errors too.')
flags.mark_flags_as_required(['workdir'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments {argv[1:]}: flags take the form --name=value')
  config, workdir, mode = FLAGS.config, FLAGS.workdir, FLAGS.mode
  if config is None:
    raise errors.UserError(f'--mode={mode} needs --config=configs/<name>.py')
  if mode != 'predict' and (FLAGS.input or FLAGS.split):
    raise errors.UserError('--input and --split are for --mode=predict')
  from diffmic_jax import config_check, run_config  # Imports JAX: after the flags are parsed.
  config_source = config_flags.get_config_filename(FLAGS['config'])
  if run_config.is_saved_config(config_source):
    run_config.check_overrides(config_flags.get_override_values(FLAGS['config']))
    config_source = f'the config saved in {workdir}'
  run_config.resolve_paths(config)  # Saved as resolved: the run's config works from anywhere.
  config_check.validate(config)
  if mode in ('prepare', 'train'):  # Evaluate and predict restore weights; they read no init file.
    config_check.check_files(config)
  if config.cpu_tuning and host_memory.cpu_only_host():
    host_memory.keep_freed_memory()  # Re-executes this process once with glibc's settings.
  console.set_up(FLAGS.verbosity)
  from diffmic_jax import distributed  # Imports JAX: after flags, before any device use.
  distributed.initialize(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes,
                         FLAGS.process_id)
  import jax
  from diffmic_jax import checkpoint, parallel

  if jax.process_index() != 0:  # One log per job: the other processes say only what goes wrong.
    logging.set_verbosity(logging.WARNING)
  parallel.check_batch_sizes(config, mode)
  with contextlib.ExitStack() as held:
    if mode == 'train' and jax.process_index() == 0:
      held.enter_context(locks.workdir_lock(workdir))  # Held until the run ends, however it ends.
    if mode == 'train':
      checkpoint.check_workdir(config, workdir)  # A refused resume writes nothing.
    _run(config, workdir, mode, config_source)


def _run(config, workdir: str, mode: str, config_source: str) -> None:
  import jax
  from diffmic_jax import data, distributed, evaluate, train
  console.announce(config, workdir, mode, config_source, FLAGS.input if mode == 'predict' else None,
                   FLAGS.output_dir)
  from_files = mode == 'predict' and FLAGS.input is not None
  if not from_files:
    if jax.process_index() == 0:
      with console.quiet_library_output():
        data.prepare(config.data, config.num_classes)  # Builds once per source; others wait below.
    distributed.sync('prepared')
    config.num_classes = data.check_num_classes(config.data, config.num_classes)  # None: the data's.
  if jax.process_index() == 0 and mode in ('prepare', 'train'):
    out = epath.Path(workdir)  # Local, or gs:// through gcsfs. Evaluate/predict write their own folders.
    out.mkdir(parents=True, exist_ok=True)
    (out / f'config_{mode}.json').write_text(config.to_json_best_effort(indent=2))
  logging.debug('config:\n%s', config)
  if mode == 'prepare':
    return
  if mode == 'train':
    results = train.train_and_evaluate(config, workdir)
  elif mode == 'evaluate':
    results = evaluate.evaluate_checkpoint(config, workdir, FLAGS.checkpoint, FLAGS.output_dir)
  else:
    split = FLAGS.split or (None if from_files else 'test')
    results = evaluate.predict(config, workdir, FLAGS.checkpoint, split=split,
                               input_path=FLAGS.input, output_dir=FLAGS.output_dir)
    if jax.process_index() == 0:
      logging.info('done: %s', json.dumps(results))  # Where the CSV went, how many rows.
    return
  if jax.process_index() == 0:
    logging.info('done: %s', json.dumps({k: v.get('diffusion', {}).get('accuracy')
                                          if isinstance(v, dict) else v for k, v in results.items()}))


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with flag and config-file errors reported as one line."""
  from diffmic_jax import run_config  # Evaluate / predict default to the run's saved config.
  try:
    argv = run_config.with_saved_config(run_config.with_shipped_config(argv))
    rest = FLAGS(argv)
    if FLAGS.config is not None:
      FLAGS.config.keys()  # A config file that failed to load raises here.
    return rest
  except errors.UserError as e:
    if '--debug' in argv:
      raise
    console.exit_with_user_error(errors.one_line(e))
  except Exception as e:  # noqa: BLE001  (flags, config files and overrides raise many kinds)
    if '--debug' in argv:
      raise
    console.exit_with_user_error(console.flag_error_message(e, argv))


def run_reporting_user_errors(argv: list[str]) -> None:
  """Runs `main`, turning user errors into one line on stderr and a non-zero exit."""
  try:
    main(argv)
  except Exception as e:  # noqa: BLE001
    if FLAGS.debug or not errors.is_user_error(e):
      raise
    console.exit_with_user_error(errors.one_line(e))


if __name__ == '__main__':
  app.run(run_reporting_user_errors, flags_parser=parse_flags)
