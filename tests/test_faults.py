"""Faults a long job meets: a second job on the same workdir or build, a checkpoint damaged on disk,
a rebuild that fails half-way, a saved config read elsewhere, images that are not 8-bit RGB,
predict inputs as users have them, two evaluations finishing at once, a stop signal inside a long
evaluation loop. Real locks held by real processes, real Orbax checkpoints with a file truncated
on disk, real TFDS builds, real APTOS photos converted to each image kind."""

import gc
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import types

from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
from PIL import Image
import pytest

from configs import demo
from data_helpers import data_cfg, write_folder
from diffmic_jax import checkpoint, data, evaluate, locks, parallel, preemption, run_config
from diffmic_jax.data import dataset, files, source
from diffmic_jax.data.examples import DataError, Example
from diffmic_jax.data.preprocess import encode_example

REPO = pathlib.Path(__file__).resolve().parents[1]
HOLD = ('import sys, time; from diffmic_jax import locks; locks.Lock(sys.argv[1], "x").acquire(); '
        'print("held", flush=True); time.sleep(600)')


def _hold(path) -> subprocess.Popen:
  """Another process holding the lock at `path`, as a running job does."""
  proc = subprocess.Popen([sys.executable, '-c', HOLD, str(path)], stdout=subprocess.PIPE,
                          text=True, env={**os.environ, 'PYTHONPATH': str(REPO)})
  assert proc.stdout.readline().strip() == 'held'
  return proc


def _kill(proc):
  proc.kill()
  proc.wait()


# ---- 1. one job per workdir and per build ----

def test_a_held_lock_names_its_holder_and_a_dead_holders_lock_is_taken_over(tmp_path):
  path = tmp_path / 'train.lock'
  holder = _hold(path)
  try:
    with pytest.raises(locks.LockedError, match=rf'in use by another process \(host \S+, pid '
                                                rf'{holder.pid}, started 20\d\d-'):
      locks.Lock(str(path), 'workdir w').acquire()
  finally:
    _kill(holder)  # SIGKILL: its lock file stays, naming it; the kernel dropped the lock.
  assert json.loads(path.read_text())['pid'] == holder.pid
  lock = locks.Lock(str(path), 'workdir w').acquire()
  assert lock.previous['pid'] == holder.pid
  assert json.loads(path.read_text())['pid'] == os.getpid()
  lock.release()
  assert not path.exists()


def test_a_second_training_in_a_busy_workdir_is_refused_in_one_line(tmp_path):
  workdir = tmp_path / 'work'
  workdir.mkdir()
  holder = _hold(workdir / locks.WORKDIR_LOCK)
  try:
    run = subprocess.run([sys.executable, '-m', 'diffmic_jax.main', '--config=configs/demo.py:smoke',
                          f'--workdir={workdir}', f'--config.data.data_dir={tmp_path / "tfds"}'],
                         cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(REPO)})
  finally:
    _kill(holder)
  lines = [line for line in run.stderr.splitlines() if line.strip()]
  assert run.returncode == 2 and len(lines) == 1, run.stderr[-3000:]
  assert lines[0].startswith(f'error: workdir {workdir} is in use by another process') \
      and f'pid {holder.pid}' in lines[0], lines
  assert [p.name for p in workdir.iterdir()] == [locks.WORKDIR_LOCK]  # Only the holder's file.
  assert not (tmp_path / 'tfds').exists()


def _folder(root: pathlib.Path, n: int = 6) -> pathlib.Path:
  """An image folder of n real 28 px fundus PNGs (2 per split), labels 0..2."""
  pixels = np.load(REPO / 'diffmic_jax' / 'data' / 'demo' / 'retinamnist.npz')['test_images']
  (root / 'img').mkdir(parents=True)
  rows = []
  for i in range(n):
    Image.fromarray(pixels[i]).save(root / 'img' / f'{i}.png')
    rows.append((f'img/{i}.png', i % 3, ('train', 'validation', 'test')[i % 3]))
  write_folder(root, rows)
  return root


def _cfg(root, tmp_path):
  return data_cfg(name='image_folder', builder_config='default', manual_dir=str(root),
                  data_dir=str(tmp_path / 'tfds'), stored_size=28)


def test_a_build_waits_for_another_jobs_build_of_the_same_source(tmp_path):
  cfg = _cfg(_folder(tmp_path / 'f'), tmp_path)
  sid = dataset.source_of(cfg)[0]
  (tmp_path / 'tfds').mkdir()
  holder = _hold(tmp_path / 'tfds' / f'{sid}.build.lock')
  done = []
  worker = threading.Thread(target=lambda: done.append(data.prepare(cfg)))
  try:
    worker.start()
    worker.join(timeout=3.0)
    assert worker.is_alive() and not done  # Waiting for the other job, not building beside it.
    assert not dataset.is_built(dataset.build_dir(cfg))
  finally:
    _kill(holder)  # The other job dies: its lock is taken over and the build goes ahead.
  worker.join(timeout=120)
  assert done and data.num_examples(cfg, 'train') == 2


def test_a_failed_rebuild_keeps_the_old_build_whole(tmp_path):
  root = _folder(tmp_path / 'f')
  cfg = _cfg(root, tmp_path)
  data.prepare(cfg)
  folder = pathlib.Path(dataset.build_dir(cfg))
  before = source.read(folder)
  rows = (root / 'labels.csv').read_text().replace('img/0.png,0', 'img/0.png,1')
  (root / 'labels.csv').write_text(rows)  # Relabelled: a rebuild is due ...
  good = (root / 'img' / '3.png').read_bytes()
  (root / 'img' / '3.png').write_bytes(good[:len(good) // 2])  # ... and one image is cut short.
  with pytest.raises(DataError, match='cannot decode image'):
    data.prepare(cfg)
  assert source.read(folder) == before and data.num_examples(cfg, 'train') == 2
  assert data.class_counts(cfg, 'train') == [2, 0, 0]  # The old labels, still readable.
  assert sorted(p.name for p in folder.parents[2].iterdir()) == ['image_folder']  # No leftovers.
  (root / 'img' / '3.png').write_bytes(good)
  data.prepare(cfg)
  assert source.read(folder)['digest'] != before['digest']
  assert data.class_counts(cfg, 'train') == [1, 1, 0]


# ---- 2. a damaged checkpoint ----

def _damage(step_dir: pathlib.Path) -> pathlib.Path:
  """Truncates the largest array file of a checkpoint, as a full disk or a torn copy does."""
  arrays = [p for p in (step_dir / 'state').rglob('*') if p.is_file() and p.parent.name == 'd']
  biggest = max(arrays, key=lambda p: p.stat().st_size)
  biggest.write_bytes(biggest.read_bytes()[:biggest.stat().st_size // 3])
  return biggest


def test_restores_drop_only_the_reports_of_abandoned_reads():
  """Reads a failed restore leaves in flight report into a closed event loop; only those go."""
  seen = []
  before = sys.unraisablehook
  sys.unraisablehook = lambda unraisable: seen.append(str(unraisable.exc_value))
  try:
    checkpoint._quiet_abandoned_reads()

    class Failing:
      def __del__(self):
        raise ValueError('a finaliser that fails')

    Failing()
    gc.collect()
    sys.unraisablehook(types.SimpleNamespace(
        exc_type=RuntimeError, exc_value=RuntimeError('Event loop is closed'),
        exc_traceback=None, err_msg=None, object=None))
  finally:
    sys.unraisablehook = before
  assert seen == ['a finaliser that fails']


def test_resume_falls_back_past_a_damaged_checkpoint_and_keeps_it(tmp_path, caplog):
  config = demo.get_config('smoke')
  rng = np.random.default_rng(0)
  states = {s: {'w': jnp.asarray(rng.normal(size=(256, 256)), jnp.float32), 'step': jnp.int32(s)}
            for s in (2, 4)}
  ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=3)
  for step, state in states.items():
    ckpt.save(step, state, None, config)
  ckpt.wait()
  _damage(tmp_path / 'checkpoints' / '4')
  target = checkpoint.abstract_like(states[2])
  with pytest.raises(Exception):
    ckpt.restore(4, target, config)  # What a plain restore of the newest one does.
  message = ckpt.damaged_message(4, False, RuntimeError('torn'))
  assert f'checkpoint {tmp_path}/checkpoints/4 does not restore' in message
  assert 'readable checkpoints: periodic [2], best []' in message
  step, state, _ = ckpt.restore_newest(target, config)
  assert step == 2 and np.array_equal(state['w'], states[2]['w'])
  assert f'checkpoint {tmp_path}/checkpoints/4 does not restore' in caplog.text
  assert ckpt.periodic.all_steps() == [2]
  kept = list((tmp_path / 'damaged').iterdir())
  assert len(kept) == 1 and kept[0].name.startswith('4-') and (kept[0] / 'state').is_dir()
  ckpt.close()


# ---- 4. the saved config travels ----

def test_saved_config_has_resolved_paths(tmp_path, monkeypatch):
  (tmp_path / 'real').mkdir()
  os.symlink(tmp_path / 'real', tmp_path / 'link')
  monkeypatch.chdir(tmp_path)
  config = demo.get_config('smoke')
  config.model.pretrained = 'weights/r18.msgpack'
  config.data.manual_dir = 'link'
  run_config.resolve_paths(config)
  assert config.model.pretrained == str(tmp_path / 'weights' / 'r18.msgpack')
  assert config.data.manual_dir == str(tmp_path / 'real')


def test_fields_saved_as_none_take_overrides(tmp_path):
  saved = demo.get_config('smoke')  # manual_dir and val_sampler saved as None.
  (tmp_path / run_config.SAVED_NAME).write_text(saved.to_json_best_effort())
  argv = ['prog', f'--config={run_config.PATH}:{tmp_path}', f'--config.data.manual_dir={tmp_path}',
          '--config.eval.val_num_steps=3']
  values = flags.FlagValues()  # As main.py parses its flags.
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  assert values.config.data.manual_dir == str(tmp_path) and values.config.eval.val_num_steps == 3


def test_a_symlinked_manual_dir_is_the_same_source(tmp_path):
  root = _folder(tmp_path / 'f')
  os.symlink(root, tmp_path / 'link')
  a, b = _cfg(root, tmp_path), _cfg(tmp_path / 'link', tmp_path)
  assert dataset.source_of(a) == dataset.source_of(b)


# ---- 5. images that are not 8-bit RGB ----

@pytest.fixture(scope='module')
def photo(data_root):
  """A real APTOS fundus photo, 224 px RGB."""
  return Image.open(sorted((data_root / 'aptos2019_224' / 'images').glob('*.jpg'))[0]).convert('RGB')


def _stored(path, size=64) -> np.ndarray:
  ex = Example(key=path.name, label=0, where=str(path), path=str(path))
  import io
  return np.asarray(Image.open(io.BytesIO(encode_example(ex, size, 'png'))))


def test_images_of_every_kind_are_scaled_not_clipped(tmp_path, photo):
  gray = photo.convert('L')
  want_gray = np.asarray(gray.resize((64, 64), Image.BICUBIC).convert('RGB'))
  sixteen = np.asarray(gray, np.uint16) * 257  # The same picture over the 16-bit range.
  Image.fromarray(sixteen).save(tmp_path / 'gray16.png')
  Image.fromarray(sixteen).save(tmp_path / 'gray16.tif')
  gray.save(tmp_path / 'gray8.png')
  for name in ('gray16.png', 'gray16.tif', 'gray8.png'):
    assert Image.open(tmp_path / name).mode in ('L', 'I;16', 'I;16B', 'I')
    got = _stored(tmp_path / name)
    assert got.shape == (64, 64, 3) and np.array_equal(got, want_gray), name
    assert (got == 255).mean() < 0.01, name  # Clipping would saturate almost every pixel.
  palette = photo.quantize(256)
  palette.save(tmp_path / 'palette.png')
  want = np.asarray(palette.convert('RGB').resize((64, 64), Image.BICUBIC))
  assert np.array_equal(_stored(tmp_path / 'palette.png'), want)
  alpha = np.full(photo.size[::-1], 255, np.uint8)
  alpha[:, :112] = 0  # The left half transparent: shown as black, not as its hidden colours.
  rgba = photo.copy()
  rgba.putalpha(Image.fromarray(alpha))
  rgba.save(tmp_path / 'rgba.png')
  shown = np.asarray(photo).copy()
  shown[:, :112] = 0
  want = np.asarray(Image.fromarray(shown).resize((64, 64), Image.BICUBIC))
  assert np.array_equal(_stored(tmp_path / 'rgba.png'), want)


# ---- 6. predict inputs ----

def test_predict_inputs_as_users_have_them(tmp_path, photo):
  folder = tmp_path / 'clinic'
  (folder / '.ipynb_checkpoints').mkdir(parents=True)
  photo.save(folder / 'café.jpg')
  photo.save(folder / '.ipynb_checkpoints' / 'copy.jpg')
  one = files.list_images(str(folder / 'café.jpg'), 5)  # A single image.
  assert one.ids == ['café.jpg'] and one.name == 'café' and not one.labelled
  assert files.list_images(str(folder), 5).ids == ['café.jpg']  # Hidden folders skipped.
  for encoding, bom in (('utf-8', b'\xef\xbb\xbf'), ('cp1252', b'')):  # As Excel saves them.
    listing = tmp_path / f'{encoding}.csv'
    listing.write_bytes(bom + 'file,label\nclinic/café.jpg,2\n'.encode(encoding))
    images = files.list_images(str(listing), 5)
    assert images.ids == ['clinic/café.jpg'] and images.labelled, encoding
  (folder / 'broken.jpg').write_bytes(photo.tobytes()[:500])
  with pytest.raises(DataError, match=r'broken\.jpg.*skip_unreadable'):
    files.list_images(str(folder), 5)
  images = files.list_images(str(folder), 5, skip_unreadable=True)
  assert images.ids == ['café.jpg'] and len(images.skipped) == 1
  assert 'broken.jpg' in images.skipped[0] and 'cannot decode image' in images.skipped[0]


# ---- 7. the smaller traps ----

def test_shipped_configs_resolve_from_any_folder(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  argv = run_config.with_shipped_config(['main', '--config=configs/demo.py:smoke', '--mode=train'])
  assert argv[1] == f'--config={REPO}/configs/demo.py:smoke' and argv[2] == '--mode=train'
  (tmp_path / 'configs').mkdir()
  (tmp_path / 'configs' / 'demo.py').write_text('')
  assert run_config.with_shipped_config(['m', '--config=configs/demo.py'])[1] == \
      '--config=configs/demo.py'  # A file here wins.


def test_two_evaluations_finishing_at_once_get_their_own_folders(tmp_path):
  got, start = [], threading.Barrier(4)

  def claim():
    start.wait()
    got.append(evaluate.claim_dir(str(tmp_path), 'eval', 12, 'test'))

  workers = [threading.Thread(target=claim) for _ in range(4)]
  for w in workers:
    w.start()
  for w in workers:
    w.join()
  assert sorted(p.name for p in got) == ['test', 'test_2', 'test_3', 'test_4']
  assert all(p.is_dir() for p in got)


def test_batch_sizes_are_user_errors_naming_the_field():
  mesh = parallel.make_mesh()
  with pytest.raises(parallel.BatchSizeError, match=r'config.eval.batch_size=63 must be a '
                                                     r'multiple of the device count 8'):
    parallel.check_batch_size(63, mesh, 'eval.batch_size')


@pytest.mark.slow
def test_a_stop_signal_ends_an_evaluation_loop_within_a_batch():
  """SIGTERM during a validation-sized loop of the smoke model: the loop ends before the next
  batch instead of running the split to its end."""
  from diffmic_jax import train_state
  config = demo.get_config('smoke')
  models = train_state.build_models(config, steps_per_epoch=1)
  mesh = parallel.make_mesh()
  # Parameters drawn leaf by leaf at the initialised shapes (around 0.5, so batch-norm variances
  # stay positive): compiling the initialisation itself would cost more than the loop under test.
  shapes = jax.eval_shape(lambda k: train_state.init_state(models, k, image_size=config.image_size),
                          jax.random.key(0))
  rng = np.random.default_rng(0)
  state = jax.tree.map(
      lambda s: (jax.random.key(0) if jax.dtypes.issubdtype(s.dtype, jax.dtypes.prng_key) else
                 jnp.asarray(rng.normal(0.0, 0.05, s.shape) + (0.5 if s.shape else 0), s.dtype)),
      shapes)
  spec = evaluate.SamplerSpec('matched', 2, 1)
  predict = evaluate.make_predict_fn(models, spec)
  pixels = np.load(REPO / 'diffmic_jax' / 'data' / 'demo' / 'retinamnist.npz')['test_images']
  seen = []

  def batches():
    for i in range(5):
      if i == 2:
        os.kill(os.getpid(), signal.SIGTERM)  # Arrives while batch 1 is being sampled.
      seen.append(i)
      yield {'image': pixels[8 * i:8 * i + 8], 'label': np.zeros(8, np.int32),
             'mask': np.ones(8, bool), 'index': np.arange(8 * i, 8 * i + 8)}

  with preemption.StepBoundary(mesh, None, agree=False) as boundary:
    with pytest.raises(preemption.Interrupted) as stopped:
      evaluate.predict_split(predict, state.dcg.variables(), state.eps.variables(), batches(),
                             mesh, jax.random.key(1), stop=boundary.stop_now)
  assert stopped.value.signum == signal.SIGTERM and seen == [0, 1, 2]
