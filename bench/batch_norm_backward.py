"""One train-mode BatchNorm + ReLU, forward and backward: torch's closed form against autodiff.

The layer is a ResNet50 stage-1 BatchNorm at batch 32, 224 px input: (32, 56, 56, 256), float32,
|mean| / std = 3. `models/batch_norm.train_norm` (closed-form backward, custom_vjp) against autodiff
through the same two-pass forward. Both are jitted with XLA:CPU's memory-optimised scheduler, as
train.py compiles under cpu_tuning, and timed alternately (median of --repeats).

    python bench/batch_norm_backward.py [--repeats=7] [--out=bench/results/batch_norm_backward.json]
"""

import json
import pathlib
import statistics
import sys
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

flags.DEFINE_integer('repeats', 7, 'Timed calls of each form.')
flags.DEFINE_string('out', str(REPO / 'bench' / 'results' / 'batch_norm_backward.json'), 'JSON path.')


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  from diffmic_jax.models import batch_norm

  def autodiff(x, scale, bias):
    mean, var, _ = batch_norm.batch_moments(x)
    return (x - mean) * (scale * jax.lax.rsqrt(var + 1e-5)) + bias

  def closed_form(x, scale, bias):
    return batch_norm.train_norm(x, scale, bias, 1e-5)[0]

  x = 3.0 + jax.random.normal(jax.random.key(0), (32, 56, 56, 256))
  scale, bias = jnp.ones(256), jnp.zeros(256)
  options = {'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'}
  results, fns = {}, {}
  for name, fn in (('autodiff', autodiff), ('closed_form', closed_form)):
    grad = jax.grad(lambda *a, fn=fn: jnp.sum(jax.nn.relu(fn(*a))), (0, 1, 2))
    fns[name] = jax.jit(grad, compiler_options=options).lower(x, scale, bias).compile()
    results[name] = {'temp_mb': fns[name].memory_analysis().temp_size_in_bytes / 2**20, 'all_s': []}
    jax.block_until_ready(fns[name](x, scale, bias))
  for _ in range(flags.FLAGS.repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(x, scale, bias))
      results[name]['all_s'].append(time.perf_counter() - t0)
  print(f"{'form':12s} {'median s':>9s} {'temp MB':>8s}")
  for name, r in results.items():
    r['median_s'] = statistics.median(r['all_s'])
    print(f"{name:12s} {r['median_s']:9.3f} {r['temp_mb']:8.1f}")
  results['speed_up'] = results['autodiff']['median_s'] / results['closed_form']['median_s']
  print(f"closed form {results['speed_up']:.2f}x autodiff")
  out = pathlib.Path(flags.FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=2) + '\n')


if __name__ == '__main__':
  app.run(main)
