"""Checks a whole config before any work starts, so a bad value stops the run at start-up.

`validate(config)` raises `ConfigError` naming every bad field with its value and what is allowed.
Field types are already enforced by ml_collections (the config is locked); this checks values.
The data section's dataset-specific fields are checked by the data builders.
"""

import math

from diffmic_jax import errors, sampling
from diffmic_jax.models import resnet

# The validation scores that can pick the best checkpoint.
SELECT_METRICS = ('accuracy', 'macro_f1', 'kappa_quadratic')
PRIOR_DROPOUT_TO = ('uniform', 'shuffle')  # train.prior_dropout_to (train_steps.drop_priors).
EPS_INITS = ('random', 'dcg')  # model.eps_init.
BETA_SCHEDULES = ('linear', 'quadratic', 'cosine')
DTYPES = ('float32', 'bfloat16')
PRIOR_INPUTS = ('fused', 'global_local')


class ConfigError(errors.UserError):
  """A config value outside what the run accepts."""


def _int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def positive(v):
  return _int(v) and v > 0, 'a positive integer'


def non_negative(v):
  return _int(v) and v >= 0, 'an integer >= 0'


def optional_positive(v):
  return v is None or (_int(v) and v > 0), 'a positive integer, or None'


def non_negative_number(v):
  return _number(v) and v >= 0, 'a number >= 0'


def positive_number(v):
  return _number(v) and v > 0, 'a number > 0'


def fraction(v):
  return _number(v) and 0 < v <= 1, 'a number in (0, 1]'


def decay(v):
  return _number(v) and 0 <= v < 1, 'a number in [0, 1)'


def boolean(v):
  return isinstance(v, bool), 'True or False'


def one_of(choices, optional: bool = False):
  def check(v):
    shown = ', '.join(repr(c) for c in choices) + (', or None' if optional else '')
    return (v is None and optional) or v in choices, f'one of {shown}'
  return check


def splits(v):
  ok = isinstance(v, (tuple, list)) and len(v) > 0 and all(isinstance(s, str) and s for s in v)
  return ok, "a non-empty tuple of split names, e.g. ('test',)"


RULES = {
    'seed': non_negative,
    'num_classes': lambda v: (v is None or (_int(v) and v >= 2), 'an integer >= 2'),
    'image_size': positive,
    'cpu_tuning': boolean,
    'data.stored_size': positive,
    'data.encoding': one_of(('png', 'jpeg')),
    'data.resize': one_of(('bilinear', 'bicubic')),
    'data.rotation_degrees': non_negative_number,
    'data.num_workers': non_negative,
    'data.read_threads': positive,
    'data.prefetch_batches': non_negative,
    'data.horizontal_flip': boolean,
    'data.vertical_flip': boolean,
    'data.class_balanced': boolean,
    'model.dcg_backbone': one_of(tuple(resnet.BACKBONES)),
    'model.eps_backbone': one_of(tuple(resnet.BACKBONES)),
    'model.small_stem': boolean,
    'model.width': positive,
    'model.num_rois': positive,
    'model.top_t_percent': fraction,
    'model.attention_dim': positive,
    'model.crop_first_channel': boolean,
    'model.feature_dim': positive,
    'model.prior_input': one_of(PRIOR_INPUTS),
    'model.dtype': one_of(DTYPES),
    'model.remat': one_of(resnet.REMAT_CHOICES),
    'diffusion.timesteps': positive,
    'diffusion.beta_schedule': one_of(BETA_SCHEDULES),
    'diffusion.beta_start': lambda v: (_number(v) and 0 < v < 1, 'a number in (0, 1)'),
    'diffusion.beta_end': lambda v: (_number(v) and 0 < v < 1, 'a number in (0, 1)'),
    'loss.mmd_weight': non_negative_number,
    'loss.ce_weight': non_negative_number,
    'loss.eps_ce_weight': non_negative_number,
    'loss.prior_weight': non_negative_number,
    'train.batch_size': positive,
    'train.dcg_pretrain_epochs': non_negative,
    'train.epochs': non_negative,
    'train.steps_per_epoch': optional_positive,
    'train.dcg_lr': non_negative_number,
    'train.eps_lr': non_negative_number,
    'train.warmup_epochs': non_negative,
    'train.min_lr': non_negative_number,
    'train.grad_clip': positive_number,
    'train.ema_decay': decay,
    'train.eval_with_ema': boolean,
    'train.prior_dropout': lambda v: (_number(v) and 0 <= v < 1, 'a probability in [0, 1)'),
    'train.prior_dropout_to': one_of(PRIOR_DROPOUT_TO),
    'model.eps_init': one_of(EPS_INITS),
    'train.official_dcg_passes': boolean,
    'train.log_every_steps': positive,
    'train.checkpoint_every_steps': optional_positive,
    'train.checkpoint_every_minutes': lambda v: (
        v is None or (_number(v) and v >= 0), 'a number of minutes >= 0, or None'),
    'train.max_to_keep': positive,
    'train.eval_every_epochs': positive,
    'train.select_metric': one_of(SELECT_METRICS),
    'eval.batch_size': positive,
    'eval.sampler': one_of(sampling.METHODS),
    'eval.num_steps': positive,
    'eval.val_sampler': one_of(sampling.METHODS, optional=True),
    'eval.val_num_steps': optional_positive,
    'eval.num_samples': positive,
    'eval.splits': splits,
    'eval.save_saliency': boolean,
    'eval.refit_temperature': boolean,
    'eval.skip_unreadable': boolean,
}


def _get(config, dotted: str):
  node = config
  for part in dotted.split('.'):
    if part not in node:
      return _ABSENT
    node = node[part]
  return node


_ABSENT = object()


def _cross_field_problems(config) -> list[str]:
  problems = []
  t = _get(config, 'diffusion.timesteps')
  for field in ('eval.num_steps', 'eval.val_num_steps'):
    n = _get(config, field)
    if _int(t) and _int(n) and n > t:
      problems.append(f'config.{field}={n} is more than diffusion.timesteps={t}: '
                      f'give at most {t} steps')
  start, end = _get(config, 'diffusion.beta_start'), _get(config, 'diffusion.beta_end')
  if _number(start) and _number(end) and start > end:
    problems.append(f'config.diffusion.beta_start={start} is above diffusion.beta_end={end}')
  return problems


def problems(config) -> list[str]:
  """Every problem found, one sentence each naming the field, its value and what is allowed."""
  found = []
  for field, rule in RULES.items():
    value = _get(config, field)
    if value is _ABSENT:
      continue  # A field this version of the config does not have (the lock catches typos).
    ok, allowed = rule(value)
    if not ok:
      found.append(f'config.{field}={value!r} is not allowed: give {allowed}')
  return found + _cross_field_problems(config)


def validate(config) -> None:
  """Raises ConfigError listing every bad value of `config`; returns None if there is none."""
  if found := problems(config):
    raise ConfigError('; '.join(found))


def check_files(config) -> None:
  """Raises ConfigError if a weights file the config names does not exist (local or gs://)."""
  from etils import epath
  for field in ('model.pretrained', 'model.eps_pretrained'):
    path = _get(config, field)
    if isinstance(path, str) and not epath.Path(path).exists():
      raise ConfigError(f'config.{field}={path!r}: no such file (convert torchvision weights with '
                        '`diffmic-convert-weights`, see README)')
