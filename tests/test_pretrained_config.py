"""config.model.pretrained / eps_pretrained reach the trunks a training run starts from."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import demo
from diffmic_jax import convert, parallel, train, train_state
from diffmic_jax.models import resnet


@pytest.mark.slow
def test_training_starts_from_the_converted_file(tmp_path):
  # A ResNet18 with its own random weights stands in for a converted ImageNet file.
  src = resnet.backbone('resnet18', output='logits').init(jax.random.key(42), jnp.zeros((1, 64, 64, 3)))
  src = jax.tree.map(lambda a: np.asarray(a) + 0.5, src)  # no init draw could produce these
  path = str(tmp_path / 'resnet18.msgpack')
  convert.save_msgpack(src, path)

  config = demo.get_config('smoke')
  config.model.dcg_backbone = config.model.eps_backbone = 'resnet18'
  config.model.width, config.model.small_stem = 64, False
  config.model.pretrained = config.model.eps_pretrained = path
  models = train_state.build_models(config, steps_per_epoch=3)
  state = jax.device_get(train.initial_state(config, models, parallel.make_mesh(jax.devices()[:1])))

  want = traverse_util.flatten_dict({k: {n: v for n, v in src[k].items() if n != 'fc'}
                                     for k in ('params', 'batch_stats')})
  trunks = [(state.dcg, 'global_net'), (state.dcg, 'local_net'), (state.eps, 'encoder')]
  for net, name in trunks:
    got = traverse_util.flatten_dict({'params': net.params[name], 'batch_stats': net.batch_stats[name]})
    assert got.keys() == want.keys(), name
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=f'{name}/{k}')
  # The heads around the trunks stay freshly initialised, and the EMA starts at the loaded weights.
  assert not np.any(state.dcg.params['saliency_conv']['kernel'] > 0.4)
  np.testing.assert_array_equal(state.ema_params['encoder']['conv1']['kernel'],
                                want[('params', 'conv1', 'kernel')])


def test_a_file_that_does_not_fit_is_refused(tmp_path):
  src = resnet.backbone('resnet18', output='pooled', small_stem=True).init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  path = str(tmp_path / 'small_stem.msgpack')
  convert.save_msgpack(src, path)
  config = demo.get_config('smoke')
  config.model.dcg_backbone, config.model.width, config.model.small_stem = 'resnet18', 64, False
  config.model.pretrained = path
  models = train_state.build_models(config, steps_per_epoch=3)
  with pytest.raises(ValueError, match='conv1'):
    train.initial_state(config, models, parallel.make_mesh(jax.devices()[:1]))
