"""Bad inputs, one table: each is refused by `python -m diffmic_jax.main` with one `error:` line
naming the thing, exit status 2, and nothing written.

The commands run against a workdir holding real Orbax checkpoints of the smoke model (steps 2 and
4, the newest with an array file truncated on disk in its damaged copies) and a demo build made
once for the module, so no row trains or builds anything.
"""

import pathlib
import shutil
import subprocess
import sys

import pytest

import subprocesses
from configs import demo
from diffmic_jax import checkpoint, data, locks, parallel, train, train_state

REPO = pathlib.Path(__file__).resolve().parents[1]
SMOKE = '--config=configs/demo.py:smoke'

pytestmark = pytest.mark.slow  # One subprocess of main per row.


@pytest.fixture(scope='module')
def world(tmp_path_factory, data_root):
  base = tmp_path_factory.mktemp('bad_inputs')
  config = demo.get_config('smoke')
  config.data.data_dir = str(base / 'tfds')
  data.prepare(config.data, config.num_classes)
  models = train_state.build_models(config, steps_per_epoch=1)
  state = train.initial_state(config, models, parallel.make_mesh())
  ckpt = checkpoint.Checkpointer(str(base / 'run'))
  for step in (2, 4):
    ckpt.save(step, state, None, config)
  ckpt.close()
  shutil.copytree(base / 'run', base / 'damaged')
  arrays = [p for p in (base / 'damaged' / 'checkpoints' / '4' / 'state').rglob('*')
            if p.is_file() and p.parent.name == 'd']
  biggest = max(arrays, key=lambda p: p.stat().st_size)
  biggest.write_bytes(biggest.read_bytes()[:biggest.stat().st_size // 3])
  # Every array unreadable: Orbax's reads then fail at once, in many threads.
  shutil.copytree(base / 'run', base / 'unreadable')
  for p in (base / 'unreadable' / 'checkpoints' / '4' / 'state').rglob('*'):
    if p.is_file() and p.parent.name == 'd':
      p.write_bytes(p.read_bytes()[:100])
  inputs = base / 'inputs'
  (inputs / 'broken').mkdir(parents=True)
  photo = sorted((data_root / 'aptos2019_224' / 'images').glob('*.jpg'))[0]
  shutil.copy(photo, inputs / 'broken' / 'fine.jpg')
  (inputs / 'broken' / 'cut.jpg').write_bytes(photo.read_bytes()[:2000])
  shutil.copy(photo, inputs / 'photo.csv')  # An image saved under a CSV's name.
  (inputs / 'labels.csv').write_text(f'file,label\n{photo},7\n')
  return {'base': base, 'tfds': config.data.data_dir, 'inputs': inputs, 'cache': base / 'cache'}


def _tree(folder: pathlib.Path) -> dict:
  return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
          for p in folder.rglob('*')}


# (name, args, what the error line must name); {base}, {inputs}, {tfds} are filled in.
ROWS = [
    ('file: undecodable image in a folder', ['--mode=predict', '--input={inputs}/broken'],
     'cut.jpg'),
    ('file: no such input', ['--mode=predict', '--input={inputs}/nowhere'], 'nowhere'),
    ('csv: an image under a CSV name', ['--mode=predict', '--input={inputs}/photo.csv'],
     'photo.csv: not a text file'),
    ('csv: label outside [0, K)', ['--mode=predict', '--input={inputs}/labels.csv'],
     'labels.csv:2: label 7 outside [0, 5)'),
    ('config: eval batch over 8 devices', ['--mode=evaluate', '--config.eval.batch_size=63'],
     'config.eval.batch_size=63 must be a multiple of the device count 8'),
    ('config: train batch over 8 devices', ['--workdir={base}/fresh', '--config.train.batch_size=12'],
     'config.train.batch_size=12 must be a multiple of the device count 8'),
    ('checkpoint: damaged on disk', ['--mode=evaluate', '--workdir={base}/damaged',
                                     '--checkpoint=latest'],
     'checkpoints/4 does not restore'),
    ('checkpoint: no array readable', ['--mode=evaluate', '--workdir={base}/unreadable',
                                       '--checkpoint=latest'],
     'checkpoints/4 does not restore'),
    ('checkpoint: no such step', ['--mode=evaluate', '--checkpoint=7'],
     'no checkpoint of step 7'),
    ('workdir: another run holds it', ['--workdir={base}/run'], 'is in use by another process'),
]


@pytest.mark.parametrize('name,args,named', ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(world, name, args, named):
  fill = {k: world[k] for k in ('base', 'inputs', 'tfds')}
  args = [a.format(**fill) for a in args]
  if not any(a.startswith('--workdir=') for a in args):
    args.append(f'--workdir={world["base"] / "run"}')
  base = world['base']
  before = _tree(base)
  holder = None
  if name.startswith('workdir'):
    holder = subprocess.Popen(
        [sys.executable, '-c', 'import sys, time; from diffmic_jax import locks; '
         'locks.Lock(sys.argv[1], "x").acquire(); print("held", flush=True); time.sleep(600)',
         str(base / 'run' / locks.WORKDIR_LOCK)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert holder.stdout.readline().strip() == 'held'
    before = _tree(base)
  try:
    run = subprocess.run([sys.executable, '-m', 'diffmic_jax.main', SMOKE,
                          f'--config.data.data_dir={world["tfds"]}', *args], cwd=REPO,
                         env=subprocesses.cpu_env(8, world['cache']), capture_output=True,
                         text=True, timeout=600)
  finally:
    if holder is not None:
      holder.kill()
      holder.wait()
  lines = [line for line in run.stderr.splitlines() if line.strip()]
  assert run.returncode == 2, run.stderr[-3000:]
  errors = [line for line in lines if line.startswith('error: ')]
  assert len(errors) == 1 and lines[-1] == errors[0] and named in errors[0], lines[-5:]
  assert 'Traceback' not in run.stderr
  after = _tree(base)
  after = {k: v for k, v in after.items() if not k.startswith('cache')}  # JAX's own cache.
  assert after == {k: v for k, v in before.items() if not k.startswith('cache')}
