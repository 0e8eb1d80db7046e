"""bench/profile_step.py's reading of a compiled program: kinds, FLOPs and DiffMIC parts, and the
profiler scopes it adds to the package's steps (which carry none of their own)."""

import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from conftest import load_bench_script
from diffmic_jax import train_state, train_steps

profile_step = load_bench_script('profile_step')


@pytest.fixture(scope='module')
def program():
  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), [(1, 1), (1, 1)],
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  def loss(w, m, x):
    with jax.named_scope('DCG'), jax.named_scope('global_net'):
      y = jax.nn.relu(conv(x, w))
    with jax.named_scope('mmd'):
      return jnp.sum(jnp.square(y.reshape(-1, 8) @ m))

  x = jnp.ones((2, 16, 16, 4))
  args = (jnp.ones((3, 3, 4, 8)), jnp.ones((8, 5)), x)
  fwd = jax.jit(loss).lower(*args).compile().as_text()
  grad = jax.jit(jax.grad(loss)).lower(*args).compile().as_text()
  return profile_step.parse_hlo(fwd), profile_step.parse_hlo(grad)


def test_forward_convolution_and_matmul_flops(program):
  fwd, _ = program
  convs = [v for v in fwd.values() if v[1] == 'convolution']
  dots = [v for v in fwd.values() if v[1] == 'matmul']
  assert [v[2] for v in convs] == [pytest.approx(2 * 2 * 16 * 16 * 8 * 9 * 4 / 1e9)]
  assert [v[2] for v in dots] == [pytest.approx(2 * 2 * 16 * 16 * 8 * 5 / 1e9)]
  assert 'DCG/global_net' in convs[0][0] and 'mmd' in dots[0][0]


def test_kernel_gradient_is_told_from_the_forward_pass(program):
  _, grad = program
  kernel_grads = [v for v in grad.values() if v[1] == 'convolution kernel gradient']
  assert [v[2] for v in kernel_grads] == [pytest.approx(2 * 2 * 16 * 16 * 8 * 9 * 4 / 1e9)]
  # XLA rewrote it and dropped its name: it inherits its operands' module, as backward work.
  assert '[inferred' in kernel_grads[0][0]
  assert profile_step.part_of(kernel_grads[0][0]) == 'DCG update backward: global stream'


@pytest.mark.parametrize('op_name,part', [
    ('jit(joint_step)/DCG/global_net/layer1_0/conv1/dot_general', 'DCG eval forward: global stream'),
    ('jit(joint_step)/transpose(jvp(DCG))/local_net/conv1/conv', 'DCG update backward: local stream'),
    ('jit(joint_step)/jvp(EpsilonNet.encode)/encoder/conv1/conv', 'eps encoder forward'),
    ('jit(joint_step)/transpose(jvp(EpsilonNet.head))/layers_1/linear', 'eps head backward'),
    ('jit(joint_step)/transpose(jvp(mmd))/exp', 'MMD'),
    ('jit(joint_step)/eps_optimizer/add', 'eps optimizer'),
    ('', 'unlabelled (made by XLA)'),
])
def test_part_of(op_name, part):
  assert profile_step.part_of(op_name) == part


def _scopes(models) -> set:
  """Every name-stack scope in the traced joint step (sub-jaxprs included)."""
  config = demo.get_config('smoke')
  state = train_state.init_state(models, jax.random.key(0), config.image_size)
  batch = {'image': np.zeros((4, config.image_size, config.image_size, 3), np.uint8),
           'label': np.arange(4, dtype=np.int32) % config.num_classes}
  jaxpr = jax.make_jaxpr(functools.partial(train_steps.joint_step, models))(
      state, batch, jax.random.key(1))
  found, todo = set(), [jaxpr.jaxpr]
  while todo:
    for eqn in todo.pop().eqns:
      found.update(str(eqn.source_info.name_stack).replace('(', '/').replace(')', '/').split('/'))
      todo.extend(j.jaxpr if hasattr(j, 'jaxpr') else j for j in jax.extend.core.jaxprs_in_params(eqn.params))
  return found


@pytest.mark.slow
def test_scopes_are_added_by_the_bench_only():
  models = train_state.build_models(demo.get_config('smoke'), steps_per_epoch=3)
  parts = {'mmd', 'ema', 'eps_optimizer', 'dcg_optimizer'}
  assert not parts & _scopes(models)
  with profile_step.add_scopes(models) as scoped:
    assert parts <= _scopes(scoped)
  assert not parts & _scopes(models)  # The package's functions are back.
