"""Convolution kernels: XLA's convolution against the forms `diffmic_jax.models.conv` uses.

Times forward, input gradient and kernel gradient of single ResNet50 layers, each jitted alone,
with flax's nn.Conv / nn.max_pool ("xla") and with conv.py's cpu_tuning forms ("ours", which
picks a matmul form for 1x1 kernels and for 3x3 outputs of <= 4 pixels and XLA's convolution
otherwise, so rows where both run the same kernel show the timing noise). Shapes: the global
stream at 224 px, batch 32, and the local stream's 32 px tiles, batch 32 x 6 = 192.

    python bench/conv_kernels.py [--repeats=3]

Prints a table and writes bench/results/conv_kernels.json: what config.cpu_tuning's convolution
forms gain on this backend.
"""

import json
import pathlib
import platform
import sys
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (stream, batch, input side, in channels, out channels, kernel, stride); kernel 0 = stem max-pool.
LAYERS = [
    ('global', 32, 224, 3, 64, 7, 2),
    ('global', 32, 112, 64, 64, 0, 2),
    ('global', 32, 56, 64, 256, 1, 1),
    ('global', 32, 56, 256, 64, 1, 1),
    ('global', 32, 56, 64, 64, 3, 1),
    ('global', 32, 56, 256, 512, 1, 2),
    ('global', 32, 28, 512, 128, 1, 1),
    ('global', 32, 28, 128, 128, 3, 1),
    ('global', 32, 14, 1024, 256, 1, 1),
    ('global', 32, 14, 256, 256, 3, 1),
    ('global', 32, 7, 2048, 512, 1, 1),
    ('global', 32, 7, 512, 512, 3, 1),
    ('local', 192, 8, 64, 64, 3, 1),
    ('local', 192, 4, 128, 128, 3, 1),
    ('local', 192, 4, 256, 256, 3, 2),
    ('local', 192, 2, 256, 256, 3, 1),
    ('local', 192, 2, 512, 512, 3, 2),
    ('local', 192, 1, 512, 512, 3, 1),
]


def _best(fn, args, repeats):
  import jax
  jax.block_until_ready(fn(*args))
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best


def time_layer(layer, repeats):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from diffmic_jax.models import conv
  _, b, side, cin, cout, k, s = layer
  x = jax.random.normal(jax.random.key(0), (b, side, side, cin))
  if k == 0:
    forms = {'xla': lambda v, x: nn.max_pool(x, (3, 3), (2, 2), padding=[(1, 1), (1, 1)]),
             'ours': lambda v, x: conv.max_pool_3x3_s2(x, cpu_tuning=True)}
    v = {}
  else:
    pad = (k - 1) // 2
    xla = nn.Conv(cout, (k, k), (s, s), padding=[(pad, pad)] * 2, use_bias=False)
    ours = conv.conv(cout, k, s, cpu_tuning=True)
    v = ours.init(jax.random.key(1), x)
    forms = {'xla': xla.apply, 'ours': ours.apply}
  out = {}
  for name, f in forms.items():
    y = jax.jit(f)(v, x)
    cot = jnp.ones_like(y)
    fwd = jax.jit(f)
    d_x = jax.jit(lambda v, x, f=f: jax.vjp(lambda x: f(v, x), x)[1](cot)[0])
    times = {'forward_ms': _best(fwd, (v, x), repeats) * 1e3,
             'input_grad_ms': _best(d_x, (v, x), repeats) * 1e3}
    if v:
      d_w = jax.jit(lambda v, x, f=f: jax.vjp(lambda v: f(v, x), v)[1](cot)[0])
      times['kernel_grad_ms'] = _best(d_w, (v, x), repeats) * 1e3
    times['total_ms'] = sum(times.values())
    out[name] = times
  return out


def main(argv):
  del argv
  args = flags.FLAGS
  import jax
  rows = []
  print(f"{'layer':40s} {'xla ms (fwd/dx/dw)':>26s} {'ours ms (fwd/dx/dw)':>26s} {'speed-up':>8s}")
  for layer in LAYERS:
    r = time_layer(layer, args.repeats)
    stream, b, side, cin, cout, k, s = layer
    what = 'max-pool 3x3' if k == 0 else f'conv {k}x{k}'
    name = f'{stream} b{b} {side}px {cin}->{cout} {what} s{s}'
    fmt = lambda t: '/'.join(f'{v:.0f}' for key, v in t.items() if key != 'total_ms')
    ratio = r['xla']['total_ms'] / r['ours']['total_ms']
    print(f"{name:40s} {fmt(r['xla']):>26s} {fmt(r['ours']):>26s} {ratio:7.2f}x", flush=True)
    rows.append({'layer': name, **r, 'speedup': ratio})
  res = {'device': str(jax.devices()[0].device_kind), 'jax': jax.__version__,
         'machine': platform.processor() or platform.machine(), 'layers': rows}
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(args.out).write_text(json.dumps(res, indent=1))
  print(f'wrote {args.out}')


def _define_flags():
  flags.DEFINE_integer('repeats', 3, 'Timed repeats per layer.')
  flags.DEFINE_string('out', str(REPO / 'bench' / 'results' / 'conv_kernels.json'), 'JSON path.')

if __name__ == '__main__':
  _define_flags()
  app.run(main)
