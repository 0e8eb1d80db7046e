"""bench/profile_step.py's reading of a compiled program: kinds, FLOPs and DiffMIC parts."""

import jax
import jax.numpy as jnp
import pytest

from conftest import load_bench_script

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
