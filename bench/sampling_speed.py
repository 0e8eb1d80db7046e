"""Sampling speed: seconds per image of each reverse chain, features computed once vs. every step.

The official models at 224 px (ResNet50 DCG for the priors; epsilon network with its ResNet18
encoder and 6144-wide head, T = 1000), batch 32 of real APTOS images, random weights, one sample per
image; every timing includes the DCG forward, as the official figures do. Each chain is one jitted `lax.scan`:

  full       1000-step ancestral chain
  truncated  the official 60-step test chain
  ddim       respaced deterministic chain, 10 and 50 steps

and, for comparison, the official structure: the 60-step chain with the ResNet18 encoder re-run
inside every step. The 1000-step re-run chain is extrapolated from it (per-step cost x 1000) and
marked as such.

    python bench/sampling_speed.py [--batch=32] [--repeats=2] [--dcg_backbone=resnet50]
        [--chains=truncated_60] [--norerun_encoder]

By default it runs as config.cpu_tuning does on a CPU (glibc keeps freed memory, CPU forms of
the convolutions); --nocpu_tuning measures the defaults. Prints a table and writes bench/results/sampling_speed.json.
"""

import functools
import json
import pathlib
import statistics
import sys
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from diffmic_jax import host_memory  # noqa: E402

# Reference figures for the official PyTorch code on a 2-core CPU: 60-step chain 66.8 s per batch
# of 32 (2.09 s per image); about 1,000 s per batch for the 1000-step chain.
OFFICIAL = {'truncated_60_s_per_image': 2.09, 'full_1000_s_per_batch': 1000.0}


def main(argv):
  del argv
  args = flags.FLAGS
  if args.cpu_tuning:  # First: the process re-executes itself with glibc's settings.
    host_memory.keep_freed_memory()

  import jax
  import jax.numpy as jnp
  from bench.train_speed import real_batch
  from configs import aptos
  from diffmic_jax import evaluate, sampling, train_state
  from diffmic_jax.data.normalize import normalize

  config = aptos.get_config()
  config.model.dcg_backbone = args.dcg_backbone
  config.cpu_tuning = args.cpu_tuning
  models = train_state.build_models(config, steps_per_epoch=100)
  state = jax.jit(functools.partial(train_state.init_state, models, image_size=224))(jax.random.key(0))
  batch = jax.device_put(real_batch(pathlib.Path(args.data_root), args.batch))
  dcg_vars, eps_vars = state.dcg.variables(), state.eps.variables()
  key = jax.random.key(1)

  def measure(fn, *fargs):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*fargs))
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*fargs))
      times.append(time.perf_counter() - t0)
    return {'first_call_s': first, 'batch_s': statistics.median(times),
            's_per_image': statistics.median(times) / args.batch}

  results = {'batch': args.batch, 'dcg_backbone': args.dcg_backbone,
             'device': str(jax.devices()[0].device_kind), 'jax': jax.__version__}
  if args.rerun_only:
    results = json.loads(pathlib.Path(args.out).read_text())
    results.pop('official', None)
  chains = [('full_1000', 'full', 1000), ('truncated_60', 'truncated', 60), ('ddim_10', 'ddim', 10),
            ('ddim_50', 'ddim', 50)]
  chains = [c for c in chains if c[0] in args.chains]
  for name, method, steps in [] if args.rerun_only else chains:
    fn = evaluate.make_predict_fn(models, evaluate.SamplerSpec(method, steps, 1))
    results[name] = measure(fn, dcg_vars, eps_vars, batch['image'], key)
    print(f"{name:28s} {results[name]['batch_s']:8.2f} s/batch {results[name]['s_per_image']:7.4f} s/image",
          flush=True)

  # The official structure: the encoder inside every step of the truncated chain.
  @jax.jit
  def rerun_encoder(images, key):
    x = normalize(images)
    y_hat = jax.nn.softmax(models.dcg.apply(dcg_vars, x)['logits'])
    def eps_fn(y_t, t):
      # The barrier ties the image to the step, so XLA cannot hoist the encoder out of the loop
      # (without it, it does: the 'every step' chain then costs what the cached one does).
      x_t, y_t = jax.lax.optimization_barrier((x, y_t))
      return models.eps.apply(eps_vars, x_t, y_t, y_hat, jnp.full((x.shape[0],), t, jnp.int32), False)
    return sampling.ancestral_chain(models.schedule, eps_fn, y_hat, key, 60)

  if args.rerun_encoder:
    results['truncated_60_encoder_every_step'] = measure(rerun_encoder, batch['image'], key)
    per_step = results['truncated_60_encoder_every_step']['batch_s'] / 60
    results['full_1000_encoder_every_step_extrapolated'] = {
        'batch_s': per_step * 1000, 's_per_image': per_step * 1000 / args.batch,
        'extrapolated': True}

  rows = [(k, v) for k, v in results.items() if isinstance(v, dict)]
  print(f"\n{'chain':44s} {'s/batch':>9s} {'s/image':>9s}")
  for k, v in rows:
    print(f"{k:44s} {v['batch_s']:9.2f} {v['s_per_image']:9.4f}")
  if 'truncated_60' in results:
    print(f"\nspeed-up vs official: 60-step "
          f"{OFFICIAL['truncated_60_s_per_image'] / results['truncated_60']['s_per_image']:.1f}x")
  if 'full_1000' in results:
    print(f"1000-step {OFFICIAL['full_1000_s_per_batch'] / results['full_1000']['batch_s']:.1f}x")
  if 'truncated_60' in results and 'truncated_60_encoder_every_step' in results:
    print(f"features once vs every step (60 steps, same code): "
          f"{results['truncated_60_encoder_every_step']['batch_s'] / results['truncated_60']['batch_s']:.1f}x")
  results['official'] = OFFICIAL
  results['keep_freed_memory'] = host_memory.in_force()
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(args.out).write_text(json.dumps(results, indent=2))
  print(f'wrote {args.out}')


def _define_flags():
  flags.DEFINE_integer('batch', 32, 'Batch size.')
  flags.DEFINE_integer('repeats', 2, 'Timed repeats.')
  flags.DEFINE_enum('dcg_backbone', 'resnet50', ['resnet50', 'resnet18'], 'DCG trunks.')
  flags.DEFINE_list('chains', ['full_1000', 'truncated_60', 'ddim_10', 'ddim_50'],
                    'Cached-feature chains to time.')
  flags.DEFINE_bool('rerun_encoder', True, 'Also time the 60-step chain with the encoder re-run '
                    'every step.')
  flags.DEFINE_bool('rerun_only', False, 'Keep the cached-feature chains from --out, time '
                    'only the re-run variant.')
  flags.DEFINE_string('data_root', str(REPO.parent / 'shared' / 'data'), 'Real images.')
  flags.DEFINE_bool('cpu_tuning', True, 'config.cpu_tuning: glibc keeps freed memory, CPU '
                    'forms of the convolutions (--nocpu_tuning: the defaults).')
  flags.DEFINE_string('out', str(REPO / 'bench' / 'results' / 'sampling_speed.json'), 'JSON path.')

if __name__ == '__main__':
  _define_flags()
  app.run(main)
