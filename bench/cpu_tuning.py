"""What config.cpu_tuning buys on XLA:CPU: page faults, XLA's temporaries, the convolution forms.

    python bench/cpu_tuning.py [--out=bench/results/cpu_tuning.json]

- page_faults: median minor page faults of a warm jitted call whose temporary is 103 MB (a ResNet50
  stage-1 activation at batch 32), with glibc's defaults and with host_memory's settings, each in
  a fresh process. The settings should bring it from about one fault per page to near zero.
- xla_temp_bytes: XLA's temporaries for the smoke config's joint step at batch 32, compiled with
  XLA:CPU's default scheduler and with the memory-optimised one train.py asks for under
  cpu_tuning. The optimised one should keep well under 60 % of the default's.
- conv_barriers: optimization barriers in the jaxpr of each conv.py form (only XLA's convolution
  under cpu_tuning carries one).

Prints the results as JSON and writes them to --out.
"""

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from absl import app, flags  # noqa: E402

flags.DEFINE_string('out', str(REPO / 'bench' / 'results' / 'cpu_tuning.json'), 'JSON path.')

_FAULT_PROBE = """
import resource, statistics
from diffmic_jax import host_memory
if {keep}:
  host_memory.keep_freed_memory()  # re-executes this probe once with glibc's settings
import jax, jax.numpy as jnp
f = jax.jit(lambda a, b: (a @ b) @ b.T)  # a @ b: a 103 MB temporary, as in a train step
a, b = jnp.ones((100_352, 64)), jnp.ones((64, 256))
for _ in range(10):
  f(a, b).block_until_ready()
faults = []
for _ in range(10):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(a, b).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(host_memory.in_force(), int(statistics.median(faults)))
"""


def page_faults() -> dict:
  from diffmic_jax import host_memory
  out = {'pages_per_call': 100_352 * 256 * 4 // 4096}
  for name, keep in (('glibc_default', False), ('keep_freed_memory', True)):
    env = {k: v for k, v in os.environ.items() if k not in host_memory.ENV}
    env.update(JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, '-c', _FAULT_PROBE.format(keep=keep)], env=env,
                          capture_output=True, text=True, check=True)
    in_force, median = done.stdout.split()[-2:]
    out[name] = {'settings_in_force': in_force == 'True', 'median_faults_per_call': int(median)}
  return out


def xla_temp_bytes() -> dict:
  import jax
  import jax.numpy as jnp
  from configs import demo
  from diffmic_jax import train_state, train_steps
  config = demo.get_config('smoke')
  models = train_state.build_models(config, steps_per_epoch=3)
  state = jax.eval_shape(lambda k: train_state.init_state(models, k, config.image_size),
                         jax.random.key(0))
  size = config.image_size
  batch = {'image': jax.ShapeDtypeStruct((32, size, size, 3), jnp.uint8),
           'label': jax.ShapeDtypeStruct((32,), jnp.int32)}
  args = (state, batch, jax.random.key(1))

  def temp(options):
    step = jax.jit(lambda *a: train_steps.joint_step(models, *a), donate_argnums=0,
                   compiler_options=options)
    return step.lower(*args).compile().memory_analysis().temp_size_in_bytes

  default = temp({})
  optimised = temp({'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'})
  return {'default_scheduler': default, 'memory_optimized_scheduler': optimised,
          'ratio': optimised / default}


def conv_barriers() -> dict:
  import jax
  from diffmic_jax.models import conv
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))

  def barriers(kernel, size, cpu_tuning):
    m = conv.conv(4, kernel, cpu_tuning=cpu_tuning)
    v = m.init(jax.random.key(0), x[:, :size, :size])
    return str(jax.make_jaxpr(m.apply)(v, x[:, :size, :size])).count('optimization_barrier')

  return {'cpu_3x3_8px_convolution': barriers(3, 8, True),
          'cpu_3x3_2px_patches': barriers(3, 2, True),
          'cpu_1x1_matmul': barriers(1, 8, True),
          'plain_nn_conv_3x3_8px': barriers(3, 8, False)}


def main(argv):
  del argv
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  results = {'page_faults': page_faults(), 'xla_temp_bytes': xla_temp_bytes(),
             'conv_barriers': conv_barriers()}
  text = json.dumps(results, indent=2)
  print(text)
  out = pathlib.Path(flags.FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(text + '\n')


if __name__ == '__main__':
  app.run(main)
