"""Where one train step's time goes, operation by operation, from XLA's own profile.

Traces one steady-state step (jax.profiler), matches each traced operation to its instruction in
the compiled program, and sums the operations' times by the part of DiffMIC they came from (the
op_name scopes: DCG global / local stream, eval forward or update, epsilon-network encoder and
head, MMD, optimizers, EMA) and by kind (convolution, convolution kernel gradient, matmul,
transpose/copy, other), with the FLOPs and GFLOP/s of the convolutions and matmuls. Also reports
how much of the step had no operation running, one, or several at once: operation times add up to
more than the step where XLA runs independent operations side by side, and to less where its
threads sit idle.

    python bench/profile_step.py --dcg_backbone=resnet50 [--step=joint|dcg_pretrain]

Prints tables and writes bench/results/profile_<step>_<backbone>.json. Written for the CPU
backend's trace, where each operation is one event on one of XLA's threads; a GPU trace lays its
lines out differently, and the script has not been run on one. Operations XLA created
itself (layout transposes, rewritten kernel gradients) carry no scope: they are counted with their
nearest named operand, a gradient first, and are listed with "[inferred]" (a kernel gradient
counts as backward work whatever its operands are named). Like main.py, it first has glibc keep
freed memory (host_memory.py).
"""

import collections
import contextlib
import glob
import json
import math
import pathlib
import re
import sys
import tempfile
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from diffmic_jax import host_memory  # noqa: E402

_SHAPE = r'(?:f32|bf16|f16|f64)\[([\d,]*)\]'


def _dims(s: str) -> list[int]:
  return [int(x) for x in s.split(',') if x]


def parse_hlo(text: str) -> dict:
  """Instruction name -> (op_name, kind, GFLOP) for every top-level instruction of the program.

  A fusion takes the op_name of the first instruction inside it that has one, and the kind and
  FLOPs of the convolution or dot it wraps.
  """
  comps, cur = {}, None
  for line in text.split('\n'):
    if m := re.match(r'^(?:ENTRY )?%?([\w.\-]+) \(.*\{$', line):
      cur = comps.setdefault(m.group(1), [])
    elif cur is not None and line.strip() and line.strip() != '}':
      cur.append(line)
  # Instructions inside a fusion run as part of it: only the others are traced operations.
  fused = set(re.findall(r'kind=k\w+, calls=%([\w.\-]+)', text))
  out, operands = {}, {}
  for comp, lines in comps.items():
    if comp in fused:
      continue
    for line in lines:
      m = re.match(r'\s+(?:ROOT )?%([\w.\-]+) = ', line)
      if not m:
        continue
      body = comps.get(c.group(1), []) if (c := re.search(r'calls=%([\w.\-]+)', line)) else []
      # Scoped names only: a parameter's op_name is just the argument's name.
      names = [re.search(r'op_name="([^"]*/[^"]*)"', x) for x in [line, *body]]
      op_name = next((n.group(1) for n in names if n), '')
      kind, flops = 'other', 0
      for x in body or [line]:
        if ' convolution(' in x or ' dot(' in x:
          kind, flops = _flops(x, '\n'.join(body or lines))
          break
      if kind == 'other' and ('transpose' in m.group(1) or 'copy' in m.group(1)):
        kind = 'transpose/copy'
      out[m.group(1)] = [op_name, kind, flops / 1e9]
      args = re.search(r' [\w-]+\(([^)]*)\)', line[m.end():])
      operands[m.group(1)] = re.findall(r'%([\w.\-]+)', args.group(1)) if args else []
  # What XLA made itself (layout transposes, kernel gradients it rewrote) has no op_name: it takes
  # the nearest named operand's, a backward one (gradient) first.
  inferred = {}
  for name, rec in out.items():
    if rec[0]:
      continue
    frontier = operands.get(name, [])
    for _ in range(4):
      found = [out[o][0] for o in frontier if o in out and out[o][0]]
      if found:
        inferred[name] = next((f for f in found if 'transpose(' in f), found[0])
        break
      frontier = [p for o in frontier for p in operands.get(o, [])]
  for name, op_name in inferred.items():
    # A kernel gradient is backward work even where its operands are named by the forward pass.
    backward = out[name][1] == 'convolution kernel gradient' and 'transpose(' not in op_name
    out[name][0] = op_name + (' [inferred, backward]' if backward else ' [inferred]')
  return {k: tuple(v) for k, v in out.items()}


def _flops(line: str, scope: str) -> tuple[str, int]:
  m = re.search(r'= ' + _SHAPE + r'\S* (convolution|dot)\(([^)]*)\)', line)
  if not m:
    return 'other', 0
  out, op = _dims(m.group(1)), m.group(2)
  shapes = []
  for name in (o.strip().split(' ')[-1].lstrip('%') for o in m.group(3).split(',')):
    s = re.search(r'%' + re.escape(name) + r' = ' + _SHAPE, scope)
    if s is None:
      return ('matmul' if op == 'dot' else 'convolution'), 0
    shapes.append(_dims(s.group(1)))
  if op == 'dot':
    c = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', line)
    contracted = math.prod(shapes[0][int(i)] for i in c.group(1).split(','))
    return 'matmul', 2 * math.prod(out) * contracted
  labels = re.search(r'dim_labels=\w+_(\w+)->(\w+)', line)
  win = re.search(r'window=\{size=([\dx]+)', line)
  window = math.prod(int(x) for x in win.group(1).split('x')) if win else 1
  out_pixels = math.prod(d for d, label in zip(out, labels.group(2)) if label.isdigit())
  # XLA writes a kernel gradient as a convolution whose "window" is the activation map and whose
  # output is the kernel: a window larger than the output tells it from a forward pass.
  kind = 'convolution kernel gradient' if window > out_pixels else 'convolution'
  return kind, 2 * math.prod(out) * window * shapes[1][labels.group(1).index('i')]


def part_of(op_name: str) -> str:
  """The part of DiffMIC an operation belongs to, from its op_name scopes."""
  if not op_name:
    return 'unlabelled (made by XLA)'
  for scope, part in (('mmd', 'MMD'), ('eps_optimizer', 'eps optimizer'),
                      ('dcg_optimizer', 'DCG optimizer'), ('ema', 'EMA')):
    if re.search(rf'(^|[/(]){scope}([/)]|$)', op_name):  # a whole scope, also inside jvp(...)
      return part
  direction = 'backward' if 'transpose(' in op_name or op_name.endswith('backward]') else 'forward'
  if 'EpsilonNet.encode' in op_name:
    return f'eps encoder {direction}'
  if 'EpsilonNet.head' in op_name:
    return f'eps head {direction}'
  if 'DCG' in op_name:
    stream = ('global stream' if '/global_net/' in op_name else
              'local stream' if '/local_net/' in op_name else 'saliency, crops, heads')
    stage = f'DCG update {direction}' if 'jvp(DCG)' in op_name else 'DCG eval forward'
    return f'{stage}: {stream}'
  return 'other (losses, noise, normalisation)'


def concurrency(events: list) -> dict:
  """Seconds of the traced span with 0, 1 and 2+ operations running."""
  points = sorted([(s, 1) for s, d in events] + [(s + d, -1) for s, d in events])
  level, last, hist = 0, points[0][0], collections.Counter()
  for t, step in points:
    hist[min(level, 2)] += t - last
    last, level = t, level + step
  return {'idle_s': hist[0] / 1e9, 'one_s': hist[1] / 1e9, 'two_or_more_s': hist[2] / 1e9,
          'span_s': (points[-1][0] - points[0][0]) / 1e9}


def _scoped(fn, name: str):
  import jax

  def wrapped(*args, **kwargs):
    with jax.named_scope(name):
      return fn(*args, **kwargs)
  return wrapped


@contextlib.contextmanager
def add_scopes(models):
  """Yields `models` whose steps name the optimizers', the EMA's and the MMD's operations.

  The package's steps carry no profiler scopes: the optimizers are wrapped here, and the MMD and
  EMA functions the steps call are swapped for scoped ones while the context is open (trace and
  compile inside it).
  """
  import dataclasses
  import optax
  from diffmic_jax import losses, train_steps

  def scoped_tx(tx, name):
    return optax.GradientTransformation(_scoped(tx.init, name), _scoped(tx.update, name))

  saved = losses.rbf_mmd, train_steps._ema
  losses.rbf_mmd, train_steps._ema = _scoped(saved[0], 'mmd'), _scoped(saved[1], 'ema')
  try:
    yield dataclasses.replace(models, dcg_tx=scoped_tx(models.dcg_tx, 'dcg_optimizer'),
                              eps_tx=scoped_tx(models.eps_tx, 'eps_optimizer'))
  finally:
    losses.rbf_mmd, train_steps._ema = saved


def run(args) -> dict:
  import jax
  from bench.train_speed import setup
  from diffmic_jax import parallel, train

  models, state, batch = setup(args.dcg_backbone, args.data_root, args.batch)
  with add_scopes(models) as scoped:
    pre, joint = train.compiled_steps(scoped, parallel.make_mesh(jax.devices()[:1]),
                                      cpu_tuning=True)
    fn, extra = (joint, (jax.random.key(1),)) if args.step == 'joint' else (pre, ())
    compiled = fn.lower(state, batch, *extra).compile()
  hlo = parse_hlo(compiled.as_text())
  # Warm-up until two calls in a row agree: the heap grows on the first calls, and on JAX 0.12
  # the first two joint steps run about 1.5-2x slower than steady ones.
  warmup = []
  while len(warmup) < args.max_warmup:
    t0 = time.perf_counter()
    state, _ = compiled(state, batch, *extra)
    jax.block_until_ready(state)
    warmup.append(time.perf_counter() - t0)
    if len(warmup) >= 2 and abs(warmup[-1] - warmup[-2]) <= 0.05 * warmup[-1]:
      break
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      t0 = time.perf_counter()
      state, _ = compiled(state, batch, *extra)
      jax.block_until_ready(state)
      wall = time.perf_counter() - t0
    profile = jax.profiler.ProfileData.from_file(
        glob.glob(f'{trace_dir}/**/*.xplane.pb', recursive=True)[0])
    events = [(ev.name, ev.start_ns, ev.duration_ns) for plane in profile.planes
              for line in plane.lines if line.name != 'python' for ev in line.events
              if ev.name in hlo]

  # name -> [seconds, GFLOP]
  by_part, by_kind = (collections.defaultdict(lambda: [0.0, 0.0]) for _ in range(2))
  per_op = collections.Counter()
  for name, _, dur in events:
    op_name, kind, gflop = hlo[name]
    for table, key in ((by_part, part_of(op_name)), (by_kind, kind)):
      table[key][0] += dur / 1e9
      table[key][1] += gflop
    per_op[name] += dur / 1e9
  total = sum(v[0] for v in by_part.values())

  def rows(table):
    return [{'name': k, 's': s, 'share': s / total, 'gflop': g, 'gflop_s': g / s if s else 0.0}
            for k, (s, g) in sorted(table.items(), key=lambda kv: -kv[1][0])]

  top = [{'op': n, 's': s, 'kind': hlo[n][1], 'gflop_s': hlo[n][2] / s if s else 0.0,
          'op_name': hlo[n][0]} for n, s in per_op.most_common(args.top)]
  return {'step': args.step, 'dcg_backbone': args.dcg_backbone, 'batch': args.batch,
          'image_size': 224, 'jax': jax.__version__, 'device': str(jax.devices()[0].device_kind),
          'xla_options': train.xla_options(), 'keep_freed_memory': host_memory.in_force(),
          'warmup_s': warmup, 'traced_step_s': wall, 'op_time_s': total, 'operations': len(events),
          'concurrency': concurrency([(s, d) for _, s, d in events]),
          'by_part': rows(by_part), 'by_kind': rows(by_kind), 'top_ops': top}


def table(r: dict) -> str:
  c = r['concurrency']
  lines = [f"warm-up steps: {', '.join(f'{t:.2f}' for t in r['warmup_s'])} s",
           f"{r['step']} step, DCG {r['dcg_backbone']}, batch {r['batch']}, 224 px: traced step "
           f"{r['traced_step_s']:.2f} s; {r['operations']} operations, {r['op_time_s']:.2f} s of "
           f"operation time; no operation running {c['idle_s']:.2f} s, one {c['one_s']:.2f} s, "
           f"two or more {c['two_or_more_s']:.2f} s"]
  for title, key in (('part', 'by_part'), ('kind', 'by_kind')):
    lines.append(f"\n{title:44s} {'s':>6s} {'share':>6s} {'GFLOP':>7s} {'GFLOP/s':>8s}")
    for row in r[key]:
      lines.append(f"{row['name'][:44]:44s} {row['s']:6.2f} {row['share']:6.1%} "
                   f"{row['gflop']:7.0f} {row['gflop_s']:8.1f}")
  lines.append('\nslowest operations:')
  for op in r['top_ops']:
    lines.append(f"  {op['s'] * 1e3:7.1f} ms  {op['kind']:28s} {op['gflop_s']:6.1f} GFLOP/s  "
                 f"{op['op_name'][-70:] or op['op']}")
  return '\n'.join(lines)


def main(argv):
  del argv
  # As a CPU-tuned run does, first (the process re-executes itself; nothing has imported jax yet).
  host_memory.keep_freed_memory()
  args = flags.FLAGS
  res = run(args)
  print(table(res))
  out = pathlib.Path(args.out or REPO / 'bench' / 'results' /
                     f'profile_{args.step}_{args.dcg_backbone}.json')
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(res, indent=2))
  print(f'wrote {out}')


def _define_flags():
  flags.DEFINE_enum('dcg_backbone', 'resnet50', ['resnet50', 'resnet18'], 'DCG trunks.')
  flags.DEFINE_enum('step', 'joint', ['joint', 'dcg_pretrain'], 'The step to profile.')
  flags.DEFINE_integer('batch', 32, 'Batch size.')
  flags.DEFINE_integer('top', 15, 'How many of the slowest operations to list.')
  flags.DEFINE_integer('max_warmup', 8, 'Untraced calls at most before the traced one '
                       '(fewer once two agree to 5%).')
  flags.DEFINE_string('data_root', str(REPO.parent / 'shared' / 'data'), 'Real images.')
  flags.DEFINE_string('out', None, 'JSON path.')

if __name__ == '__main__':
  _define_flags()
  app.run(main)
