"""config_check: every shipped config passes; a bad value is refused at once, naming the field,
the value and what is allowed; None is the one 'unset' value."""

import pytest

from configs import aptos, default, demo, isic, placenta, reduced
from diffmic_jax import config_check, errors

SHIPPED = [(aptos, ''), (aptos, 'smoke'), (isic, ''), (isic, 'smoke'), (placenta, ''),
           (placenta, 'smoke'), (demo, ''), (demo, 'smoke'), (reduced, 'aptos'), (reduced, 'isic')]


@pytest.mark.parametrize('module,arg', SHIPPED)
def test_shipped_configs_pass(module, arg):
  config_check.validate(module.get_config(arg))


@pytest.mark.parametrize('field,value,allowed', [
    ('train.select_metric', 'f1', "'accuracy', 'macro_f1', 'kappa_quadratic'"),
    ('eval.sampler', 'ddpm', "'full'"),
    ('eval.val_sampler', 'ddpm', 'or None'),
    ('model.dcg_backbone', 'resnet101', "'resnet18'"),
    ('model.dtype', 'float16', "'float32', 'bfloat16'"),
    ('model.remat', 'stages', "'none', 'blocks', 'conv_outputs'"),
    ('diffusion.beta_schedule', 'sigmoid', "'linear'"),
    ('train.batch_size', 0, 'a positive integer'),
    ('train.steps_per_epoch', -1, 'a positive integer, or None'),
    ('eval.val_num_steps', 0, 'a positive integer, or None'),
    ('train.ema_decay', 1.0, '[0, 1)'),
    ('model.top_t_percent', 0.0, '(0, 1]'),
    ('eval.splits', (), 'non-empty tuple'),
])
def test_a_bad_value_names_field_value_and_choices(field, value, allowed):
  config = demo.get_config('smoke')
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(config_check.ConfigError) as err:
    config_check.validate(config)
  msg = str(err.value)
  assert f'config.{field}={value!r}' in msg and allowed in msg, msg
  assert isinstance(err.value, errors.UserError)


def test_every_problem_is_listed_in_one_message():
  config = demo.get_config()
  config.train.select_metric = 'f1'
  config.eval.num_steps = 5000  # more than T = 1000
  msg = str(pytest.raises(config_check.ConfigError, config_check.validate, config).value)
  assert 'select_metric' in msg and 'eval.num_steps=5000 is more than diffusion.timesteps=1000' in msg
  assert '\n' not in msg


def test_unset_fields_are_none():
  c = default.get_config()
  unset = (c.train.steps_per_epoch, c.eval.val_sampler, c.eval.val_num_steps, c.model.pretrained,
           c.model.eps_pretrained)
  assert unset == (None,) * 5 and c.cpu_tuning is False
  c.train.steps_per_epoch, c.model.pretrained = 7, 'weights.msgpack'  # typed placeholders
  assert (c.train.steps_per_epoch, c.model.pretrained) == (7, 'weights.msgpack')
  with pytest.raises(TypeError):
    c.train.steps_per_epoch = 'seven'


def test_missing_weights_file_is_refused(tmp_path):
  config = demo.get_config('smoke')
  config_check.check_files(config)  # None: nothing to check
  config.model.eps_pretrained = str(tmp_path / 'missing.msgpack')
  with pytest.raises(config_check.ConfigError, match='model.eps_pretrained.*no such file'):
    config_check.check_files(config)
  (tmp_path / 'missing.msgpack').write_bytes(b'')
  config_check.check_files(config)
