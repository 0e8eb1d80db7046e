"""Training speed: images/s of the DCG pre-training step and the joint step, after compilation.

Official model sizes at 224 px on real APTOS images (random weights): DCG backbones ResNet50 (as
the official code) or ResNet18, epsilon network ResNet18 + 6144-wide head. Reports compile time,
steady-state seconds per step (median of --steps), images/s, peak resident memory of the process
(CPU; device peak on GPU/TPU), XLA's buffer sizes for each step (arguments: state and batch;
outputs; temporaries: activations and gradients; on CPU the process peak, read before the
parts below run, adds both compiled programs, the runtime and the heap glibc keeps), a profile
of the joint step by part (DCG eval forward, epsilon network forward+backward with its three head
passes, DCG update), and each steady-state step's page faults and kernel CPU time. By default it
runs as config.cpu_tuning does on a CPU (glibc keeps freed memory, CPU forms of the convolutions,
freed pages handed back after building the state and after each compilation); --nocpu_tuning
measures the defaults.

    python bench/train_speed.py --dcg_backbone=resnet50 [--batch=32] [--steps=5] [--remat=blocks]
    python bench/train_speed.py --compile_only --remat=blocks  # XLA's buffer sizes, no steps

Each configuration runs in its own process so peak memory is its own. Prints a table and writes
bench/results/train_speed_<backbone>.json.
"""

import functools
import json
import os
import pathlib
import platform
import resource
import statistics
import sys
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from diffmic_jax import host_memory  # noqa: E402

# Reference figures for the official PyTorch code on a 2-core CPU: batch 32, 224 px, ResNet50 DCG,
# real APTOS images.
OFFICIAL = {'dcg_pretrain_s': 8.1, 'joint_s': 22.5, 'joint_img_s': 1.42, 'joint_peak_gb': 10.1}


def real_batch(data_root: pathlib.Path, batch: int):
  import numpy as np
  from PIL import Image
  files = sorted((data_root / 'aptos2019_224' / 'images').glob('*.jpg'))[:batch]
  if len(files) < batch:
    raise SystemExit(f'need {batch} APTOS images under {data_root}/aptos2019_224/images')
  images = np.stack([np.asarray(Image.open(f).convert('RGB').resize((224, 224))) for f in files])
  return {'image': images, 'label': np.arange(batch, dtype=np.int32) % 5}


def timed(fn, *args, steps: int, threaded: bool = False, queued: bool = False):
  """(compile s, per-step s, XLA buffer sizes in GB, kernel work per step, last output) of a jit.

  Kernel work: the median steady-state step's page faults and kernel CPU seconds (host_memory.py).

  threaded: fn is a train step (state, ...) -> (state, metrics) jitted with the state donated, as
  train.py runs it; each call gets the previous call's state.
  queued (threaded only): each call is made before the previous one has finished and timed to the
  previous one's end, as train.py dispatches on accelerators (with CPU tuning it waits for each
  step; docs/benchmarks.md, Memory).
  """
  import jax
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  host_memory.release_freed_memory()  # As train.py does once a stage's program is compiled.
  analysis = compiled.memory_analysis()
  buffers = {k: getattr(analysis, f'{k}_size_in_bytes') / 2**30
             for k in ('argument', 'output', 'temp', 'alias')} if analysis else {}
  times, faults, sys_s = [], [], []
  prev = None
  for i in range(steps + 1):  # The first call is a warm-up.
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    out = compiled(*args)
    jax.block_until_ready(prev[1] if queued and prev is not None else out)  # prev[0] was donated
    prev = out
    times.append(time.perf_counter() - t0)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    faults.append(r1.ru_minflt - r0.ru_minflt)
    sys_s.append(r1.ru_stime - r0.ru_stime)
    if threaded:
      args = (out[0], *args[1:])
  jax.block_until_ready(out)
  # Page faults and kernel CPU seconds per steady-state step: what host_memory.py is about.
  kernel = {'page_faults': statistics.median(faults[1:]), 'kernel_cpu_s': statistics.median(sys_s[1:])}
  return compile_s, times[1:], buffers, kernel, out


def setup(dcg_backbone: str, data_root: str, batch: int, dtype: str = 'float32',
          cpu_tuning: bool = True, remat: str = 'none'):
  """(models, initialised state, real batch on the device): the APTOS recipe at 224 px."""
  import jax
  from configs import aptos
  from diffmic_jax import train_state

  config = aptos.get_config()
  config.model.dcg_backbone = dcg_backbone
  config.model.dtype = dtype
  config.cpu_tuning = cpu_tuning
  config.model.remat = remat
  models = train_state.build_models(config, steps_per_epoch=100)
  state = jax.jit(functools.partial(train_state.init_state, models, image_size=224))(jax.random.key(0))
  batch = jax.device_put(real_batch(pathlib.Path(data_root), batch))
  jax.block_until_ready((state, batch))
  host_memory.release_freed_memory()  # As train.py does once the state is built.
  return models, state, batch


def run(args) -> dict:
  import jax
  from diffmic_jax import parallel, train, train_steps
  from diffmic_jax.data.normalize import normalize
  from diffmic_jax.models import priors as dcg_priors

  models, state, batch = setup(args.dcg_backbone, args.data_root, args.batch, args.dtype,
                               args.cpu_tuning, args.remat)
  print(f'{jax.devices()[0].device_kind}: state initialised', flush=True)
  key = jax.random.key(1)
  res = {'dcg_backbone': args.dcg_backbone, 'batch': args.batch, 'image_size': 224,
         'dtype': args.dtype, 'remat': args.remat, 'queued': args.queued,
         'xla_flags': os.environ.get('XLA_FLAGS', ''),
         'device': str(jax.devices()[0].device_kind), 'jax': jax.__version__,
         'machine': platform.processor() or platform.machine()}

  # The steps exactly as train.py compiles them (state donated, its XLA options), on one device;
  # the parts below get the same options.
  pre, joint = train.compiled_steps(models, parallel.make_mesh(jax.devices()[:1]), cpu_tuning=True)
  res['xla_options'] = train.xla_options()
  jit = functools.partial(jax.jit, compiler_options=res['xla_options'])
  if args.compile_only:  # XLA's buffer sizes alone: seconds instead of minutes of steps.
    for name, fn, fargs in [('joint', joint, (state, batch, key)), ('dcg_pretrain', pre, (state, batch))]:
      analysis = fn.lower(*fargs).compile().memory_analysis()
      res[name] = {'xla_buffers_gb': {k: getattr(analysis, f'{k}_size_in_bytes') / 2**30
                                      for k in ('argument', 'output', 'temp', 'alias')}}
    return res
  # The joint step first: it is the headline figure, and on an accelerator whose compiler
  # autotunes every convolution, a capped run should still produce it.
  for name, fn in [('joint', joint), ('dcg_pretrain', pre)]:
    fargs = (state, batch, key) if name == 'joint' else (state, batch)
    c, t, buffers, kernel, (state, _) = timed(fn, *fargs, steps=args.steps, threaded=True,
                                              queued=args.queued)
    res[name] = {'compile_s': c, 'step_s': statistics.median(t), 'all_s': t,
                 'img_s': args.batch / statistics.median(t), 'xla_buffers_gb': buffers,
                 'kernel_per_step': kernel}
    print(f"{name}: compile {c:.1f} s, {res[name]['step_s']:.4f} s/step, {res[name]['img_s']:.1f} img/s",
          flush=True)

  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB, steps only
  stats = jax.devices()[0].memory_stats() or {}
  res['peak_memory_gb'] = stats.get('peak_bytes_in_use', rss * 2**30) / 2**30
  res['peak_memory_kind'] = 'device' if 'peak_bytes_in_use' in stats else 'process RSS (CPU)'
  res['joint_parts_s'] = {}
  if not args.parts:
    return res
  # Where the joint step's time goes: each part jitted alone.
  images = normalize(batch['image'])
  dcg_fwd = jit(lambda s, x: dcg_priors(models.dcg.apply(s.dcg.variables(), x)))
  pri = dcg_fwd(state, images)
  eps_grad = jit(jax.grad(lambda p, s, x, y, pr, k: train_steps.diffusion_loss(
      models, p, s.eps.batch_stats, x, y, pr, k)[0]))
  dcg_upd = jit(lambda s, x, y: train_steps._dcg_update(models, s.dcg, x, y))
  parts = {}
  for name, fn, fargs in [('dcg_eval_forward', dcg_fwd, (state, images)),
                          ('eps_forward_backward', eps_grad,
                           (state.eps.params, state, images, batch['label'], pri, key)),
                          ('dcg_update', dcg_upd, (state, images, batch['label']))]:
    _, t, _, _, _ = timed(fn, *fargs, steps=max(2, args.steps // 2))
    parts[name] = statistics.median(t)
  res['joint_parts_s'] = parts
  return res


def table(r: dict) -> str:
  rows = [('DCG pre-training step', r['dcg_pretrain'], OFFICIAL['dcg_pretrain_s']),
          ('joint step', r['joint'], OFFICIAL['joint_s'])]
  lines = [f"{'step':24s} {'compile s':>9s} {'s/step':>8s} {'img/s':>7s} {'official s':>10s} {'speed-up':>8s}"]
  for name, m, off in rows:
    lines.append(f"{name:24s} {m['compile_s']:9.1f} {m['step_s']:8.2f} {m['img_s']:7.2f} "
                 f"{off:10.1f} {off / m['step_s']:7.2f}x")
  lines.append(f"peak memory: {r['peak_memory_gb']:.2f} GB ({r['peak_memory_kind']}); official "
               f"{OFFICIAL['joint_peak_gb']} GB")
  for name in ('joint', 'dcg_pretrain'):
    lines.append(f"{name} step, XLA's buffers (GB): " + ', '.join(
        f'{k} {v:.2f}' for k, v in r[name]['xla_buffers_gb'].items()))
    k = r[name]['kernel_per_step']
    lines.append(f"{name} step, per steady-state step: {k['page_faults']:.0f} page faults, "
                 f"{k['kernel_cpu_s']:.2f} s kernel CPU")
  lines.append('joint step parts (s): ' + ', '.join(f'{k} {v:.2f}' for k, v in r['joint_parts_s'].items()))
  return '\n'.join(lines)


def main(argv):
  del argv
  args = flags.FLAGS
  if args.cpu_tuning:  # First: the process re-executes itself with glibc's settings.
    host_memory.keep_freed_memory()
  res = run(args)
  res['keep_freed_memory'] = host_memory.in_force()
  print(f"DCG {args.dcg_backbone}, batch {args.batch}, 224 px, {res['device']}, remat {args.remat}")
  if args.compile_only:
    for name in ('joint', 'dcg_pretrain'):
      print(f"{name} step, XLA's buffers (GB): " + ', '.join(
          f'{k} {v:.3f}' for k, v in res[name]['xla_buffers_gb'].items()))
  else:
    print(table(res))
  suffix = '' if args.dtype == 'float32' else f'_{args.dtype}'
  suffix += '' if args.remat == 'none' else f'_remat_{args.remat}'
  suffix += '_buffers' if args.compile_only else ''
  out = pathlib.Path(args.out or REPO / 'bench' / 'results' / f'train_speed_{args.dcg_backbone}{suffix}.json')
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(res, indent=2))
  print(f'wrote {out}')


def _define_flags():
  flags.DEFINE_enum('dcg_backbone', 'resnet50', ['resnet50', 'resnet18'], 'DCG trunks.')
  flags.DEFINE_integer('batch', 32, 'Batch size.')
  flags.DEFINE_integer('steps', 5, 'Timed steps.')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
  flags.DEFINE_enum('remat', 'none', ['none', 'conv_outputs', 'blocks'], 'config.model.remat.')
  flags.DEFINE_bool('parts', True, 'Also time the joint step part by part.')
  flags.DEFINE_bool('compile_only', False, "Only compile both steps and report XLA's buffers.")
  flags.DEFINE_bool('queued', False, 'Call each train step before the previous one has '
                    'finished (what train.py does on accelerators).')
  flags.DEFINE_string('data_root', str(REPO.parent / 'shared' / 'data'), 'Real images.')
  flags.DEFINE_bool('cpu_tuning', True, 'config.cpu_tuning: glibc keeps freed memory, CPU '
                    'forms of the convolutions (--nocpu_tuning: the defaults).')
  flags.DEFINE_string('out', None, 'JSON path.')

if __name__ == '__main__':
  _define_flags()
  app.run(main)
