"""The config a training run saved in its workdir, as the config of evaluate and predict.

Training writes `<workdir>/config_train.json`. Evaluate and predict without `--config` read it
back (`--config=<this file>:<workdir>` is what main.py names for them), so a run is evaluated with
the model it was trained with. Overrides may then change only how it is evaluated (`eval.*`) and
where its data lives; anything else would evaluate another model than the one saved.
"""

import json
import os
import re

import ml_collections
from etils import epath

from diffmic_jax.errors import UserError

SAVED_NAME = 'config_train.json'
PATH = os.path.abspath(__file__)  # What main.py names as --config for a saved run.
EVAL_OVERRIDES = ('eval.', 'data.data_dir', 'data.manual_dir')  # Prefixes and fields allowed.
# Evaluation fields newer than some saved runs, with their defaults (configs/default.py).
NEWER_EVAL_FIELDS = {'max_saliency_images': 64, 'refit_temperature': False}


class SavedConfigError(UserError, ValueError):
  """A workdir without a readable saved config, or an override of a field it fixes."""


def _tuples(value):
  """JSON lists back to the tuples the config files use (ConfigDict keeps a field's type)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def load(workdir: str) -> ml_collections.ConfigDict:
  """The config saved by the training run in `workdir`."""
  path = epath.Path(workdir) / SAVED_NAME
  if not path.exists():
    raise SavedConfigError(f'{path} not found: {workdir} holds no training run; pass --config')
  try:
    saved = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise SavedConfigError(f'{path} is not valid JSON ({e}); pass --config') from None
  saved = _tuples(saved)
  saved['eval'] = {**NEWER_EVAL_FIELDS, **saved.get('eval', {})}
  return ml_collections.ConfigDict(saved)


def get_config(workdir: str) -> ml_collections.ConfigDict:
  """For `--config=.../run_config.py:<workdir>` (ml_collections' config-file flag)."""
  return load(workdir)


def is_saved_config(config_filename: str) -> bool:
  """Whether ml_collections' `config_filename` (path[:arg]) names this file, i.e. a saved run."""
  return os.path.abspath(config_filename.split(':', 1)[0]) == PATH


def check_overrides(overrides) -> None:
  """Refuses overrides of anything but evaluation and data-location fields."""
  refused = sorted(f for f in overrides if not any(
      f == allowed or (allowed.endswith('.') and f.startswith(allowed))
      for allowed in EVAL_OVERRIDES))
  if refused:
    raise SavedConfigError(
        f'--config.{refused[0]}: evaluate and predict use the config the run saved and may '
        f'override only eval.*, data.data_dir and data.manual_dir (refused: {", ".join(refused)}); '
        'to evaluate with another config, pass --config')


def _flag_value(argv: list[str], name: str) -> str | None:
  for i, arg in enumerate(argv):
    if m := re.fullmatch(rf'--?{name}=(.*)', arg):
      return m.group(1)
    if re.fullmatch(rf'--?{name}', arg) and i + 1 < len(argv):
      return argv[i + 1]
  return None


def with_saved_config(argv: list[str]) -> list[str]:
  """argv, naming the workdir's saved config when evaluate / predict are given no --config."""
  if _flag_value(argv, 'mode') not in ('evaluate', 'predict'):
    return argv
  if any(re.fullmatch(r'--?config(=.*)?', a) for a in argv[1:]):
    return argv
  workdir = _flag_value(argv, 'workdir')
  if workdir is None:
    return argv  # absl reports the missing --workdir.
  load(workdir)  # A clear error now, not a config-flag traceback later.
  return [argv[0], f'--config={PATH}:{workdir}', *argv[1:]]
