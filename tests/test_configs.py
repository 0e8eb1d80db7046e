"""Every shipped config is a valid override of the base config and names a buildable dataset."""

import pytest

from configs import aptos, default, demo, isic, placenta, reduced
from diffmic_jax import sampling
from diffmic_jax.data.dataset import builder_config_of


def _keys(cfg, prefix=''):
  out = set()
  for k, v in cfg.items():
    out |= _keys(v, f'{prefix}{k}.') if hasattr(v, 'items') else {prefix + k}
  return out


@pytest.mark.parametrize('module,arg', [(aptos, ''), (isic, ''), (placenta, ''), (demo, ''), (demo, 'smoke'),
                                        (aptos, 'smoke'), (isic, 'smoke'), (placenta, 'smoke')])
def test_config_overrides_only_base_fields(module, arg):
  cfg = module.get_config(arg)
  assert _keys(cfg) == _keys(default.get_config())  # overrides, never new or missing fields
  assert builder_config_of(cfg.data).num_classes in (cfg.num_classes, -1)
  assert cfg.train.batch_size % 8 == 0 and cfg.eval.sampler in sampling.METHODS
  assert cfg.data.val_split not in cfg.eval.splits  # The reported split never picks a checkpoint.


def test_official_recipes():
  a, i, p = aptos.get_config(), isic.get_config(), placenta.get_config()
  assert (a.num_classes, a.train.batch_size, a.eval.num_steps, a.data.vertical_flip) == (5, 32, 60, True)
  assert (i.num_classes, i.train.batch_size, i.eval.num_steps, i.data.vertical_flip) == (7, 64, 250, False)
  assert (p.num_classes, p.train.epochs, p.train.dcg_pretrain_epochs, p.eval.num_steps) == (4, 2000, 10, 100)
  for c in (a, i, p):
    assert c.model.dcg_backbone == 'resnet50' and c.model.eps_backbone == 'resnet18'
    assert c.model.feature_dim == 6144 and c.diffusion.timesteps == 1000 and c.loss.mmd_weight == 0.5


@pytest.mark.parametrize('module', [aptos, isic, placenta, demo])
def test_config_argument_is_honoured_or_refused(module):
  full, smoke = module.get_config(), module.get_config('smoke')
  assert smoke.model.dcg_backbone == 'resnet_tiny' and smoke.train.steps_per_epoch == 3
  assert full.model.dcg_backbone != 'resnet_tiny' and full.train.epochs > smoke.train.epochs
  assert (smoke.data.name, smoke.num_classes) == (full.data.name, full.num_classes)  # same data
  with pytest.raises(ValueError, match="takes one of '', 'smoke'.*got 'smok'"):
    module.get_config('smok')


def test_reduced_takes_a_dataset():
  assert reduced.get_config('isic').num_classes == 7
  with pytest.raises(ValueError, match="'aptos', 'isic'.*got 'ham'"):
    reduced.get_config('ham')


def test_cpu_tuning_only_in_the_cpu_demo():
  assert demo.get_config().cpu_tuning and demo.get_config('smoke').cpu_tuning
  assert not any(m.get_config().cpu_tuning for m in (aptos, isic, placenta))
