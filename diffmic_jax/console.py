"""What the entry point prints: a short start-up summary, our own log lines, one-line user errors.

At the default verbosity, libraries' INFO records, TFDS's progress bars and prints, and JAX's
note about backends it could not start are dropped; `--verbosity=1` (or `-v 1`) shows everything,
the full config included.
"""

import ast
import contextlib
import io
import logging as std_logging
import os
import sys

from absl import logging

from diffmic_jax import errors, host_memory

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_NOISE = ('Unable to initialize backend', 'Using custom data configuration',
          'Waiting for previous save to complete',
          'Given directory is read only')  # Orbax, on every restore for evaluation.


class _OwnRecordsOnly(std_logging.Filter):
  """Keeps this package's records and other libraries' warnings, minus known noise."""

  def filter(self, record):
    if any(record.getMessage().startswith(n) for n in _NOISE):
      return False
    return record.levelno >= std_logging.WARNING or record.pathname.startswith(_PACKAGE)


class _PlainFormatter(std_logging.Formatter):
  """The message alone; warnings and errors keep their level as a prefix."""

  def format(self, record):
    text = super().format(record)
    return text if record.levelno < std_logging.WARNING else f'{record.levelname}: {text}'


def set_up(verbosity: int) -> None:
  """Console logging for the run: quiet at verbosity 0 (absl's default), everything above."""
  if verbosity > 0:
    return
  handler = logging.get_absl_handler()
  handler.addFilter(_OwnRecordsOnly())
  handler.setFormatter(_PlainFormatter('%(message)s'))
  import tensorflow_datasets as tfds  # The data pipeline imports it anyway.
  tfds.disable_progress_bar()


@contextlib.contextmanager
def quiet_library_output():
  """Swallows what libraries print to stdout (TFDS's 'Downloading and preparing ...') unless -v."""
  if logging.get_verbosity() > logging.INFO:  # absl: DEBUG is above INFO.
    yield
    return
  with contextlib.redirect_stdout(io.StringIO()):
    yield


def announce(config, workdir: str, mode: str, config_source: str, input_path: str | None = None,
             output_dir: str | None = None) -> None:
  """Says what runs, on what, and where it reads and writes."""
  import jax
  if jax.process_index() != 0:
    return
  devices = f'{jax.device_count()} {jax.default_backend()} device(s), {jax.process_count()} process(es)'
  d = config.data
  logging.info('diffmic-jax %s: %s on %s', mode, config_source, devices)
  if input_path:
    logging.info('input: %s (image files; no dataset is built)', input_path)
  elif mode == 'export':
    logging.info('exports the checkpoint (no data is read)')
  else:
    logging.info('data: %s/%s from %s, built into %s', d.name, d.builder_config,
                 d.manual_dir or 'the built-in source', d.data_dir)
  if mode in ('prepare', 'train'):
    logging.info('writes to %s (config_%s.json there holds the full config; -v 1 prints it)',
                 workdir, mode)
  else:
    logging.info('writes to a new folder under %s/%s/ (its config.json holds the full config)',
                 output_dir or workdir, {'evaluate': 'eval'}.get(mode, mode))
  if config.cpu_tuning:
    if jax.default_backend() == 'cpu':
      logging.info('CPU tuning on: glibc keeps freed memory (%s), CPU forms of the convolutions',
                   'in force' if host_memory.in_force() else 'not available here')
    else:
      logging.info('config.cpu_tuning is ignored on %s', jax.default_backend())
  if mode == 'train' and not config.model.pretrained:
    logging.info('the DCG trunks start from random weights (config.model.pretrained is unset). For '
                 "ImageNet weights: `diffmic-convert-weights --input resnet50-0676ba61.pth "
                 "--arch resnet50` (torchvision's file), then "
                 '--config.model.pretrained=resnet50-0676ba61.msgpack')


def flag_error_message(error: Exception, argv: list[str]) -> str:
  """One line for an error raised while parsing flags or loading the config file."""
  text = errors.one_line(error)
  config_arg = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  if isinstance(error, OSError) and config_arg and 'Failed loading config file' in str(error):
    path = config_arg.split(':')[0]
    if not os.path.exists(path):
      return f'--config={config_arg}: no such file {path!r} (configs/ holds the shipped ones)'
    return f'--config={config_arg}: could not load it: {text.rsplit(";", 1)[-1].strip()}'
  if 'Error whilst parsing config file' in str(error):  # get_config raised: keep its last line.
    return f'--config={config_arg}: {str(error).strip().splitlines()[-1].split(": ", 1)[-1]}'
  if "has no attribute 'get_config'" in text:
    return f'--config={config_arg}: not a config file (it has no get_config function)'
  if isinstance(error, (KeyError, AttributeError)):  # An override of a field the config lacks.
    field, hint = _missing_field(error)
    bad = next((a.split('=', 1)[0] for a in argv if a.startswith('--config.')
                and f'.{field}' in a.split('=', 1)[0]), '--config.*')
    return f'{bad}: the config has no field {field!r}' + (f'; {hint}' if hint else '')
  return f'{text} (--helpshort lists the flags)'


def _missing_field(error: Exception) -> tuple[str, str]:
  """(field, did-you-mean hint) from ml_collections' KeyError, raw or quoted inside another error."""
  text = str(error.args[0]) if error.args else ''
  for _ in range(2):  # Undo one or two levels of repr().
    if text[:1] in '\'"':
      try:
        text = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        break
  first, _, hint = text.partition('\n')
  return first.strip('\'"'), hint.strip()


def exit_with_user_error(message: str) -> None:
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(errors.EXIT_USER_ERROR)
