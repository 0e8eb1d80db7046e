"""The config a training run saved in its workdir, as the config of evaluate and predict.

Training writes `<workdir>/config_train.json`. Evaluate and predict without `--config` read it
back (`--config=<this file>:<workdir>` is what main.py names for them), so a run is evaluated with
the model it was trained with. Overrides may then change only how it is evaluated (`eval.*`) and
where its data lives; anything else would evaluate another model than the one saved.

The config is saved with its paths absolute and resolved (`resolve_paths`), so it means the same
from any folder, and a field saved as None stays overridable with a value of its type.
"""

import importlib.util
import json
import os
import re

import ml_collections
from etils import epath

from diffmic_jax.errors import UserError

SAVED_NAME = 'config_train.json'
PATH = os.path.abspath(__file__)  # What main.py names as --config for a saved run.
EVAL_OVERRIDES = ('eval.', 'data.data_dir', 'data.manual_dir')  # Prefixes and fields allowed.
# Fields newer than some saved runs, with their defaults (configs/default.py): a run saved before
# a field existed was trained without it, so it reads back as the default that means "off".
NEWER_FIELDS = {
    'eval': {'max_saliency_images': 64, 'refit_temperature': False, 'skip_unreadable': False},
    'model': {'eps_init': 'random'},
    'loss': {'prior_weight': 0.0},
    'train': {'prior_dropout': 0.0, 'prior_dropout_to': 'uniform', 'official_dcg_passes': False},
}


class SavedConfigError(UserError, ValueError):
  """A workdir without a readable saved config, or an override of a field it fixes."""


def _tuples(value):
  """JSON lists back to the tuples the config files use (ConfigDict keeps a field's type)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


PATH_FIELDS = ('model.pretrained', 'model.eps_pretrained', 'data.manual_dir', 'data.data_dir')


def resolve_paths(config) -> None:
  """Makes the config's local paths absolute, `~` and symbolic links resolved, in place: the
  config then names the same files from any folder, and a symlinked manual_dir is the one source
  its target is (one build, not two)."""
  for field in PATH_FIELDS:
    section, name = field.split('.')
    value = config[section].get(name)
    if isinstance(value, str) and value and '://' not in value:
      config[section][name] = os.path.realpath(os.path.expanduser(value))


def _field_types() -> dict:
  """{dotted field: type} of the fields configs/default.py declares as typed placeholders."""
  try:
    from configs import default
  except ImportError:
    return {}
  out = {}
  for section, fields in default.get_config().items():
    if isinstance(fields, ml_collections.ConfigDict):
      for name, ref in fields._fields.items():  # noqa: SLF001  The declared types live here.
        if isinstance(ref, ml_collections.FieldReference) and ref.get() is None:
          out[f'{section}.{name}'] = ref.get_type()
  return out


def _overridable_nones(saved: dict) -> dict:
  """Fields saved as None and open to overrides, as typed placeholders: a plain None would take
  no value from the command line."""
  types = _field_types()
  for section, fields in saved.items():
    if not isinstance(fields, dict):
      continue
    for name, value in fields.items():
      field = f'{section}.{name}'
      if value is None and _allowed(field):
        fields[name] = ml_collections.config_dict.placeholder(types.get(field, str))
  return saved


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
  for section, fields in NEWER_FIELDS.items():
    saved[section] = {**fields, **saved.get(section, {})}
  return ml_collections.ConfigDict(_overridable_nones(saved))


def get_config(workdir: str) -> ml_collections.ConfigDict:
  """For `--config=.../run_config.py:<workdir>` (ml_collections' config-file flag)."""
  return load(workdir)


def is_saved_config(config_filename: str) -> bool:
  """Whether ml_collections' `config_filename` (path[:arg]) names this file, i.e. a saved run."""
  return os.path.abspath(config_filename.split(':', 1)[0]) == PATH


def _allowed(field: str) -> bool:
  return any(field == allowed or (allowed.endswith('.') and field.startswith(allowed))
             for allowed in EVAL_OVERRIDES)


def check_overrides(overrides) -> None:
  """Refuses overrides of anything but evaluation and data-location fields."""
  refused = sorted(f for f in overrides if not _allowed(f))
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
  if _flag_value(argv, 'mode') not in ('evaluate', 'predict', 'export'):
    return argv
  if any(re.fullmatch(r'--?config(=.*)?', a) for a in argv[1:]):
    return argv
  workdir = _flag_value(argv, 'workdir')
  if workdir is None:
    return argv  # absl reports the missing --workdir.
  load(workdir)  # A clear error now, not a config-flag traceback later.
  return [argv[0], f'--config={PATH}:{workdir}', *argv[1:]]


def with_shipped_config(argv: list[str]) -> list[str]:
  """argv with `--config=configs/<name>.py[:arg]` naming the installed package's config file
  when no such file is under the current folder: the shipped recipes run from any folder."""
  out = []
  for arg in argv:
    m = re.fullmatch(r'(--?config=)configs/([\w.-]+\.py)(:.*)?', arg)
    if m and not os.path.exists(f'configs/{m.group(2)}'):
      spec = importlib.util.find_spec('configs')
      for folder in (spec.submodule_search_locations or []) if spec else []:
        if os.path.isfile(shipped := os.path.join(folder, m.group(2))):
          arg = f'{m.group(1)}{shipped}{m.group(3) or ""}'
          break
    out.append(arg)
  return out
