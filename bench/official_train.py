"""The official DiffMIC trained by its own trainer on this port's recipe, seed by seed, then tested.

Runs the published code (github scott-yjyang/DiffMIC, imported from --official_dir, never copied)
as its main.py runs it (`main.py --config=<yml> --loss=diffmic_conditional --ni --seed=N`, which
calls `Diffusion.train()`), on the recipe that `--config` and its overrides describe for this port,
so that the two codes can be compared run against run:

    python bench/official_train.py --official_dir=/path/to/DiffMIC \
      --torchvision=/path/to/site-packages/torchvision --seeds=0,1,2 --workdir=/tmp/official32 \
      --name=aptos2019_32 --config=configs/reduced.py:aptos \
      --config.data.manual_dir=$DIFFMIC_DATA_ROOT/aptos2019_224 \
      --config.image_size=32 --config.data.stored_size=32 --config.model.small_stem=True \
      --config.model.width=16 --config.model.feature_dim=256 --config.train.dcg_pretrain_epochs=4 \
      --config.train.epochs=10 --config.train.warmup_epochs=1 --config.train.eval_every_epochs=2

The port's side of the comparison is bench/accuracy.py with the same `--config` and overrides and
`--resample=truncated`, then bench/diffusion_vs_dcg.py with `--split=test` (docs/experiments.md).
`--smoke` runs the same path on 24/16/16 images, T = 20, for seconds: a check, not a result.

The official code's configs/aptos.yml is the base; from the port's config it takes the trunks'
size, T and the test chain's length, the batch size, the epoch counts (DCG pre-training, joint,
warm-up), the validation cadence, the learning rates and the EMA decay. The official trainer keeps
the checkpoint with the best accuracy on its test loader, which here reads the VALIDATION list; the
test list is read once, afterwards, from that checkpoint. Fields of the port's config that the
official code cannot follow stop the run with `error: ...`; those where the two codes differ on
purpose are listed in the JSON's `recipe_differences`.

What is changed on the official code at run time, and nothing else (PATCHES, also in the JSON):
  * CPU: torch.set_num_threads(--threads); the DCG's hard-coded 'cuda:0' crop buffer and ROI masks
    are put on the CPU.
  * Images and splits: the official APTOSDataset reads pickled lists of {'img_root', 'label'};
    they are written from the port's split lists (diffmic_jax.data.builders.aptos2019: train,
    validation, test), and the yml's `testdata` is the validation list. APTOSDataset's hard-coded
    224 px `trainsize` (its Resize) is set to config.image_size; its transforms are otherwise the
    official ones (CropCenterSquare, Resize, flips, RandomRotation(30), ImageNet normalisation).
  * Trunks: pretraining.modules.resnet50 (both DCG streams, ImageNet weights officially) and
    model.resnet18 (the epsilon network's encoder) build torchvision ResNets with BasicBlocks at
    config.model.width, random torchvision initial values, the small stem when the config has it.
    The DCG's layers hard-coded 2048 wide are re-made at the trunks' width (8 x width), its 7x7
    saliency grid and 32 px crops at the trunk's grid and one cell's side, its number of crops at
    config.model.num_rois (bench/official_code.py: narrow_dcg).
  * scikit-learn: the trainer calls .item() on utils.cohen_kappa's and utils.compute_f1_score's
    results, which scikit-learn >= 1.6 returns as a Python float; diffusion_trainer's names for
    them return numpy.float64 (the same value).
  * Capture only (numbers unchanged): training.logging_freq = 1, so that the trainer's own log
    line gives the noise loss of every step, read by a logging handler; a wrapper records the value
    that Diffusion.nonlinear_guidance_model_train_step returns (the DCG's loss) in both stages;
    tqdm's bars are off (TQDM_DISABLE); data.num_workers = 0 (no loader processes on a small CPU:
    the augmentations draw from the main process's seeded `random`).
Import-time stubs for packages that are imported but never called here: bench/official_code.py.

After training, on the test list, from the checkpoint the trainer chose (ckpt_best.pth,
aux_ckpt_best.pth), with the models in eval mode: the DCG's accuracy; the diffusion's with the
official test chain (diffusion_utils.p_sample_loop, the last eval.num_steps steps from unit noise
around the prior), --num_samples draws per image (mean softmax; the first draw alone is
`diffusion_one_sample`, as the official test() reports); its agreement with its DCG; and the
image-swap diagnostic of bench/diffusion_vs_dcg.py: the same chain with the same noise, the
epsilon network shown another image of the batch (`p_sample_loop(model, x[rows], y_hat, y_hat,
...)`) while the DCG's prior comes from the right one.

Writes bench/results/official_train_<name>.json (--smoke: under --workdir) and prints a table;
each seed's result is kept in <workdir>/seed<N>/result.json, and a seed that has one is not run
again. Long: on a 2-core CPU shared with other work, one torch thread, a seed of the 32 px recipe
takes about 50 minutes, most of it the official validation's full T-step chain (six times); run it
in the background. A second torch thread made it several times slower there, not faster.
"""

import json
import logging
import math
import os
import pathlib
import pickle
import re
import runpy
import statistics
import subprocess
import sys
import time
import types

os.environ.setdefault('TQDM_DISABLE', '1')  # Before the official code imports tqdm.

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from absl import app, flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bench import official_code  # noqa: E402
from bench.diffusion_vs_dcg import compare, deranged_rows  # noqa: E402
from diffmic_jax import metrics  # noqa: E402
from diffmic_jax.data.builders import aptos2019  # noqa: E402

PATCHES = [
    'torch.set_num_threads(--threads); CPU device',
    "DCG experiment_parameters['device_type'] = 'cpu', retrieve_roi_crops.gpu_number = None "
    "(official: cuda:0 crop buffer and ROI masks)",
    "yml data.traindata / data.testdata: pickled {'img_root', 'label'} lists written from the "
    "port's train / VALIDATION lists (the trainer's best-checkpoint choice is made on validation)",
    'dataloader.loading.APTOSDataset: trainsize (224, 224) -> (image_size, image_size), its '
    'transforms.Resize re-made at that size; every other transform official',
    'pretraining.modules.resnet50 and model.resnet18 -> narrow torchvision ResNets (BasicBlock, '
    'base width config.model.width, random init, small stem if config.model.small_stem)',
    'DCG 2048-wide layers (saliency conv, attention U/V, local classifier) re-made at 8 x width; '
    'cam_size, crop_shape and K set for the trunk grid (bench/official_code.py narrow_dcg)',
    'utils.cohen_kappa and utils.compute_f1_score (as diffusion_trainer imports them) return '
    'numpy.float64: the trainer calls .item() on them, and scikit-learn >= 1.6 returns a float',
    'capture only: training.logging_freq = 1 and a logging handler read the per-step noise loss; '
    'a wrapper of Diffusion.nonlinear_guidance_model_train_step records the DCG loss; '
    'TQDM_DISABLE=1; data.num_workers = 0',
]
RECIPE_FIELDS = ('image_size', 'model.width', 'model.small_stem', 'model.feature_dim',
                 'model.num_rois', 'diffusion.timesteps', 'eval.num_steps', 'train.batch_size',
                 'train.dcg_pretrain_epochs', 'train.epochs', 'train.warmup_epochs',
                 'train.eval_every_epochs', 'train.eps_lr', 'train.dcg_lr', 'train.min_lr',
                 'train.grad_clip', 'train.ema_decay')
SUMMARY_KEYS = ('dcg_accuracy', 'diffusion_accuracy', 'diffusion_one_sample_accuracy',
                'shuffled_encoder_accuracy', 'agreement', 'dcg_macro_f1', 'diffusion_macro_f1',
                'shuffled_encoder_macro_f1', 'dcg_kappa_quadratic', 'diffusion_kappa_quadratic',
                'dcg_auc_ovr_macro', 'diffusion_auc_ovr_macro', 'best_validation_accuracy',
                'chosen_epoch', 'train_minutes', 'test_minutes')
BLOCKS = {'resnet18': (2, 2, 2, 2), 'resnet_tiny': (1, 1, 1, 1)}
SMOKE = {'train': 24, 'validation': 16, 'test': 16}


def fail(message: str):
  """Bad input: the one line, exit status 2, before anything is written."""
  print(message, file=sys.stderr)
  sys.exit(2)


def _get(config, dotted):
  for part in dotted.split('.'):
    config = config[part]
  return config


def check_recipe(c) -> list[str]:
  """The port's config fields the official code cannot follow stop the run (error: ...); returns
  the differences that stay, each a sentence."""
  need = {
      'data.name': 'aptos2019', 'model.prior_input': 'fused', 'model.attention_dim': 128,
      'model.pretrained': None, 'model.eps_pretrained': None, 'model.eps_init': 'random',
      'model.dtype': 'float32', 'model.top_t_percent': 1.0, 'loss.mmd_weight': 0.5, 'loss.mmd_bandwidths': (),
      'loss.ce_weight': 0.0, 'loss.eps_ce_weight': 0.0, 'train.prior_dropout': 0.0,
      'train.steps_per_epoch': None, 'data.class_balanced': False, 'data.horizontal_flip': True,
      'data.vertical_flip': True, 'data.rotation_degrees': 30.0, 'diffusion.beta_schedule': 'linear',
      'train.select_metric': 'accuracy'}
  for field, value in need.items():
    got = _get(c, field)
    if (tuple(got) if isinstance(got, (list, tuple)) else got) != value:
      fail(f'error: config.{field} = {got!r}: the official code has only {value!r}')
  for field in ('model.dcg_backbone', 'model.eps_backbone'):
    if _get(c, field) not in BLOCKS:
      fail(f'error: config.{field} = {_get(c, field)!r}: narrow trunks are made for '
           f'{sorted(BLOCKS)}')
  grid = _grid(c)
  if c.image_size % grid:
    fail(f'error: config.image_size = {c.image_size} is not a whole number of '
         f'{grid} saliency cells; the official crops need one')
  diffs = []
  if not c.model.crop_first_channel:
    diffs.append('crops: the official DCG crops colour channel 0 and repeats it; this config '
                 'crops all three (--config.model.crop_first_channel=True matches)')
  if c.train.eval_with_ema:
    diffs.append('the official trainer validates and saves the raw epsilon-network params, '
                 'never its EMA; this config evaluates the EMA (train.eval_with_ema=True)')
  diffs.append(f'validation chain: the official trainer validates with the full '
               f'{c.diffusion.timesteps}-step p_sample_loop, one sample per image; this config '
               f'with {c.eval.val_sampler or c.eval.sampler} '
               f'{c.eval.val_num_steps or c.eval.num_steps} steps')
  diffs.append('test chain: official truncated p_sample_loop (unit noise around the prior at step '
               f'{c.eval.num_steps}); the port evaluates eval.sampler={c.eval.sampler!r} '
               '(bench/accuracy.py --resample=truncated gives the official chain)')
  return diffs


def _grid(c) -> int:
  return math.ceil(c.image_size / (8 if c.model.small_stem else 32))


def official_yml(official_dir: pathlib.Path, c, lists: dict, smoke: bool) -> dict:
  """configs/aptos.yml with this recipe's sizes, epochs, rates and the written lists."""
  y = yaml.safe_load((official_dir / 'configs' / 'aptos.yml').read_text())
  y['data'].update(traindata=str(lists['train']), testdata=str(lists['validation']),
                   num_workers=0, num_classes=c.num_classes)
  y['model'].update(feature_dim=c.model.feature_dim, hidden_dim=c.model.feature_dim,
                    arch='resnet18', ema=c.train.ema_decay > 0,
                    ema_rate=c.train.ema_decay or y['model']['ema_rate'])
  d = y['diffusion']
  d.update(timesteps=c.diffusion.timesteps, test_timesteps=c.eval.num_steps,
           beta_start=c.diffusion.beta_start, beta_end=c.diffusion.beta_end)
  d['aux_cls']['n_pretrain_epochs'] = c.train.dcg_pretrain_epochs
  y['training'].update(batch_size=c.train.batch_size, n_epochs=c.train.epochs,
                       warmup_epochs=c.train.warmup_epochs,
                       validation_freq=c.train.eval_every_epochs, logging_freq=1)
  y['optim'].update(lr=c.train.eps_lr, min_lr=c.train.min_lr, grad_clip=c.train.grad_clip)
  y['aux_optim']['lr'] = c.train.dcg_lr
  if smoke:
    y['diffusion'].update(timesteps=20, test_timesteps=5)
    y['training']['batch_size'] = y['testing']['batch_size'] = 8
    y['diffusion']['aux_cls']['n_pretrain_epochs'] = 1
    y['training'].update(n_epochs=2, warmup_epochs=1, validation_freq=1)
  return y


def write_lists(c, out: pathlib.Path, smoke: bool) -> tuple[dict, dict]:
  """The port's train/validation/test lists as the official pickles; (paths, sizes)."""
  try:
    splits = aptos2019.resolve(os.path.expanduser(c.data.manual_dir), c.data.builder_config)
  except aptos2019.DataError as e:
    fail(f'error: config.data: {e}')
  for name, examples in splits.items():
    missing = [ex.where for ex in examples if ex.path is None or not os.path.isfile(ex.path)]
    if missing:
      fail(f'error: {missing[0]}: no image in {c.data.manual_dir} '
           f'({len(missing)} of the {name} list)')
  out.mkdir(parents=True, exist_ok=True)
  paths, sizes = {}, {}
  for name, examples in splits.items():
    if smoke:
      examples = examples[:SMOKE[name]]
    rows = [{'img_root': ex.path, 'label': int(ex.label)} for ex in examples]
    paths[name] = out / f'aptos_{name}.pkl'
    paths[name].write_bytes(pickle.dumps(rows))
    sizes[name] = len(rows)
  return paths, sizes


class Capture(logging.Handler):
  """Reads the official trainer's own log lines: per-step noise loss, validation accuracy, the
  epoch of the best checkpoint, the DCG accuracies it reports, errors."""
  NOISE = re.compile(r'^epoch: (\d+), step: (\d+), CE loss: .*, Noise Estimation loss: (\S+?),')
  VAL = re.compile(r'^epoch: (\d+), step: (\d+), Average accuracy: (\S+?), Average Kappa: (\S+?), '
                   r'Average F1: (\S+?),')
  BEST = re.compile(r'^Update best accuracy at Epoch (\d+)\.')
  DCG_ACC = re.compile(r'^\s*(Before training|After pre-training|After joint-training), '
                       r'(?:the )?guidance classifier accuracy on the (training|test) set is (\d+\.\d+)')

  def __init__(self):
    super().__init__()
    self.noise, self.validation, self.best_epochs, self.dcg_reported = {}, [], [], []
    self.dcg_steps, self.errors = [], []

  def emit(self, record):
    msg = record.getMessage()
    if record.levelno >= logging.ERROR:
      self.errors.append(msg)
    if m := self.NOISE.match(msg):
      self.noise[int(m[2])] = (int(m[1]), float(m[3]))  # The epoch's last line repeats a step.
    elif m := self.VAL.match(msg):
      self.validation.append({'epoch': int(m[1]) + 1, 'step': int(m[2]),
                              'accuracy': float(m[3]) / 100, 'kappa': float(m[4]),
                              'macro_f1': float(m[5])})
    elif m := self.BEST.match(msg):
      self.best_epochs.append(int(m[1]) + 1)
    elif m := self.DCG_ACC.match(msg):
      split = {'training': 'train', 'test': 'validation'}[m[2]]
      self.dcg_reported.append({'when': m[1], 'split': split, 'accuracy': float(m[3])})

  def record_dcg_step(self, loss: float):
    """The DCG's loss of one update: pre-training until the first joint step has logged."""
    if self.noise:
      self.dcg_steps.append(('joint', self.noise[max(self.noise)][0], loss))
    else:
      self.dcg_steps.append(('pretrain', None, loss))


def install(off, c, capture_ref: dict) -> None:
  """The run-time changes listed in PATCHES (once per process)."""
  import torch  # pylint: disable=import-outside-toplevel
  width, small = c.model.width, c.model.small_stem
  off.modules.resnet50 = lambda pretrained=False, **kw: official_code.narrow_resnet(
      off.resnet, width, BLOCKS[c.model.dcg_backbone], small)
  off.model.resnet18 = lambda **kw: official_code.narrow_resnet(
      off.resnet, width, BLOCKS[c.model.eps_backbone], small)
  grid = _grid(c)

  def make_dcg(config):
    return official_code.narrow_dcg(off.dcg.DCG(config), 8 * width, c.num_classes, grid,
                                    c.image_size // grid, c.model.num_rois)
  off.trainer.AuxCls = make_dcg

  loading, size = off.loading, (c.image_size, c.image_size)
  official_init = loading.APTOSDataset.__init__

  def dataset_init(self, data_list, train=True):
    official_init(self, data_list, train)
    self.trainsize = size
    steps = self.transform_center.transforms
    at = [i for i, t in enumerate(steps) if isinstance(t, loading.transforms.Resize)]
    assert len(at) == 1, steps
    steps[at[0]] = loading.transforms.Resize(size)
  loading.APTOSDataset.__init__ = dataset_init

  for name in ('cohen_kappa', 'compute_f1_score'):
    official_fn = getattr(off.trainer, name)
    setattr(off.trainer, name, lambda *a, _fn=official_fn, **k: np.float64(_fn(*a, **k)))

  official_step = off.trainer.Diffusion.nonlinear_guidance_model_train_step

  def dcg_step(self, x_batch, y_batch, aux_optimizer):
    loss = official_step(self, x_batch, y_batch, aux_optimizer)
    capture_ref['capture'].record_dcg_step(loss)
    return loss
  off.trainer.Diffusion.nonlinear_guidance_model_train_step = dcg_step
  del torch


def _per_epoch(values_by_epoch: dict) -> list:
  return [float(np.mean(values_by_epoch[e])) for e in sorted(values_by_epoch)]


def train_seed(official_dir: pathlib.Path, yml_path: pathlib.Path, exp: pathlib.Path, seed: int,
               capture: Capture) -> dict:
  """main.py --config=<yml> --loss=diffmic_conditional --ni --seed=<seed>, in this process."""
  logging.getLogger().addHandler(capture)
  argv = sys.argv
  sys.argv = ['main.py', f'--config={yml_path}', f'--exp={exp}', '--doc=run', f'--seed={seed}',
              '--loss=diffmic_conditional', '--ni']
  start = time.time()
  try:
    runpy.run_path(str(official_dir / 'main.py'), run_name='__main__')
  except SystemExit as e:
    if e.code not in (0, None):
      raise
  finally:
    sys.argv = argv
    for h in logging.getLogger().handlers[:]:  # main.py removes them only when training succeeds.
      logging.getLogger().removeHandler(h)
  minutes = (time.time() - start) / 60
  if capture.errors:
    raise SystemExit(f'error: the official trainer failed (seed {seed}): {capture.errors[-1]}')
  noise, pre, joint = {}, {}, {}
  for epoch, loss in capture.noise.values():
    noise.setdefault(epoch, []).append(loss)
  steps = len(capture.noise) // max(1, len(noise))
  pre_losses = [v for kind, _, v in capture.dcg_steps if kind == 'pretrain']
  for i, v in enumerate(pre_losses):
    pre.setdefault(i // steps, []).append(v)
  for kind, epoch, v in capture.dcg_steps:
    if kind == 'joint':
      joint.setdefault(epoch, []).append(v)
  return {
      'train_minutes': minutes,
      'steps_per_epoch': steps,
      'noise_loss_per_epoch': _per_epoch(noise),
      'dcg_pretrain_loss_per_epoch': _per_epoch(pre),
      'dcg_joint_loss_per_epoch': _per_epoch(joint),
      'noise_loss_per_step': [capture.noise[s][1] for s in sorted(capture.noise)],
      'validation': capture.validation,
      'best_validation_accuracy': max((v['accuracy'] for v in capture.validation), default=None),
      'best_epochs': capture.best_epochs,
      'dcg_accuracy_reported': capture.dcg_reported,
  }


def config_namespace(off, y: dict):
  """The config object main.py makes from the yml for a training run (what test() reads back)."""
  import torch  # pylint: disable=import-outside-toplevel
  cfg = off.utils.dict2namespace(y)
  cfg.diffusion.noise_prior, cfg.model.cat_y_pred = False, True
  cfg.device, cfg.tb_logger = torch.device('cpu'), None
  return cfg


def test_seed(off, cfg, log_path: pathlib.Path, test_list: pathlib.Path, seed: int,
              num_samples: int, num_classes: int) -> dict:
  """The chosen checkpoint on the test list: DCG, the official test chain, the image swap."""
  import torch  # pylint: disable=import-outside-toplevel
  start = time.time()
  torch.manual_seed(seed)
  run_args = types.SimpleNamespace(add_ce_loss=False, train_guidance_only=False,
                                   resume_training=False, log_path=str(log_path))
  diffusion = off.trainer.Diffusion(run_args, cfg, device=cfg.device)
  dcg = diffusion.cond_pred_model
  model = off.model.ConditionalModel(cfg, guidance=cfg.diffusion.include_guidance)
  states = torch.load(log_path / 'ckpt_best.pth', map_location='cpu')
  model.load_state_dict(states[0], strict=True)
  dcg.load_state_dict(torch.load(log_path / 'aux_ckpt_best.pth', map_location='cpu')[0],
                      strict=True)
  model.eval()
  dcg.eval()
  loader = torch.utils.data.DataLoader(off.loading.APTOSDataset(str(test_list), train=False),
                                       batch_size=cfg.testing.batch_size, shuffle=False)
  rng = np.random.default_rng(seed)
  chain = lambda x, y_hat: off.dutils.p_sample_loop(
      model, x, y_hat, y_hat, diffusion.test_num_timesteps, diffusion.alphas,
      diffusion.one_minus_alphas_bar_sqrt, only_last_sample=True).softmax(dim=-1)
  keep = {'label': [], 'dcg': [], 'diff': [], 'one': [], 'shuf': []}
  for x, labels in loader:
    rows = deranged_rows(np.ones(len(labels), bool), rng)
    with torch.no_grad():
      y_hat = dcg(x)[0].softmax(dim=1)
      noise_state = torch.get_rng_state()
      draws = torch.stack([chain(x, y_hat) for _ in range(num_samples)])
      torch.set_rng_state(noise_state)  # The same noise: only the encoder's image differs.
      swapped = torch.stack([chain(x[torch.from_numpy(rows)], y_hat) for _ in range(num_samples)])
    keep['label'].append(labels.numpy())
    keep['dcg'].append(y_hat.numpy())
    keep['diff'].append(draws.mean(0).numpy())
    keep['one'].append(draws[0].numpy())
    keep['shuf'].append(swapped.mean(0).numpy())
  cat = {k: np.concatenate(v).astype(np.float64) for k, v in keep.items()}
  labels = cat['label'].astype(np.int64)
  res = compare(labels, cat['dcg'], cat['diff'], cat['shuf'], num_classes)
  for who, prob in (('dcg', cat['dcg']), ('diffusion', cat['diff'])):
    m = metrics.classification_metrics(labels, prob / prob.sum(1, keepdims=True), num_classes)
    res.update({f'{who}_{k}': m[k] for k in ('balanced_accuracy', 'kappa_quadratic',
                                             'auc_ovr_macro')})
  res['diffusion_one_sample_accuracy'] = float(np.mean(cat['one'].argmax(1) == labels))
  res.update(chosen_epoch=int(states[2]) + 1, chosen_step=int(states[3]),
             num_samples=num_samples, test_chain_steps=diffusion.test_num_timesteps,
             test_minutes=(time.time() - start) / 60)
  return res


def port_commands(seeds: str, name: str) -> list[str]:
  """This port's runs of the same recipe: bench/accuracy.py (its checkpoints re-evaluated with
  the official truncated chain), then the agreement and image-swap figures on the test split."""
  given = [a for a in sys.argv[1:] if a.startswith('--config=')]
  config = given[-1] if given else f"--config={flags.FLAGS['config'].default_as_str.strip(chr(39))}"
  overrides = ' '.join(a for a in sys.argv[1:] if a.startswith('--config.'))
  work = f'/tmp/port_{name}'
  return [f'python bench/accuracy.py {config} --seeds={seeds} --workdir={work} --name={name} '
          f'--resample=truncated {overrides}',
          f'python bench/diffusion_vs_dcg.py {config} --seeds={seeds} --workdir={work} '
          f'--split=test --name={name}_test {overrides} --config.eval.sampler=truncated']


def print_epochs(per_seed: dict) -> None:
  """Per-epoch training losses and validation accuracies, one line per seed."""
  row = lambda values: ' '.join(f'{v:.4f}' for v in values)
  for seed, r in per_seed.items():
    print(f'seed {seed}: DCG pre-training loss per epoch  {row(r["dcg_pretrain_loss_per_epoch"])}')
    print(f'seed {seed}: noise loss per joint epoch       {row(r["noise_loss_per_epoch"])}')
    print(f'seed {seed}: DCG loss per joint epoch         {row(r["dcg_joint_loss_per_epoch"])}')
    print(f'seed {seed}: validation accuracy (epoch)      ' + ' '.join(
        f"{v['accuracy']:.4f} ({v['epoch']})" for v in r['validation']))


def _stats(values: list) -> dict:
  values = [v for v in values if v is not None]
  return {'mean': statistics.mean(values),
          'std': statistics.stdev(values) if len(values) > 1 else 0.0, 'values': values}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  f = flags.FLAGS
  logging.getLogger().removeHandler(absl_logging.get_absl_handler())  # The trainer logs its own.
  c = f.config
  if not c.data.manual_dir:
    fail('error: config.data.manual_dir is not set (the aptos2019_224 folder)')
  seeds = [int(s) for s in f.seeds.split(',')]
  commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
  official_dir = pathlib.Path(f.official_dir).resolve()
  if not (official_dir / 'main.py').is_file():
    fail(f'error: --official_dir={f.official_dir}: no official DiffMIC checkout (main.py) there')
  differences = check_recipe(c)
  work = pathlib.Path(f.workdir)
  lists, sizes = write_lists(c, work / 'lists', f.smoke)
  y = official_yml(official_dir, c, lists, f.smoke)
  if sizes['validation'] % y['testing']['batch_size']:
    differences.append('the official validation accuracy is the mean of per-batch accuracies; '
                       f"{sizes['validation']} images in batches of {y['testing']['batch_size']} "
                       'weigh the last, smaller batch more')
  yml_path = work / 'official.yml'
  yml_path.write_text(yaml.safe_dump(y, sort_keys=False))

  off, stubs = official_code.import_official(official_dir, f.torchvision, data_pipeline=True)
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(f.threads)
  capture_ref = {}
  install(off, c, capture_ref)
  cfg = config_namespace(off, y)
  num_samples = f.num_samples or c.eval.num_samples
  print(f'official DiffMIC from {official_dir}; lists {sizes}; seeds {seeds}; torch '
        f'{torch.__version__}, {torch.get_num_threads()} threads'
        + ('; SMOKE (tiny subsets, T = 20): not a result' if f.smoke else ''), flush=True)
  print('patches:\n  ' + '\n  '.join(PATCHES), flush=True)
  print('stubs: ' + '; '.join(stubs), flush=True)

  per_seed = {}
  for seed in seeds:
    out = work / f'seed{seed}' / 'result.json'
    if out.is_file():
      per_seed[seed] = json.loads(out.read_text())
      print(f'seed {seed}: kept {out}', flush=True)
      continue
    exp = work / f'seed{seed}' / 'exp'
    if exp.exists():
      subprocess.run(['rm', '-rf', str(exp)], check=True)
    capture_ref['capture'] = capture = Capture()
    print(f'seed {seed}: training, log {exp}/logs/run/split_0/stdout.txt', flush=True)
    res = train_seed(official_dir, yml_path, exp, seed, capture)
    res.update(test_seed(off, cfg, exp / 'logs' / 'run' / 'split_0', lists['test'], seed,
                         num_samples, c.num_classes))
    res['load_avg_1m_end'] = os.getloadavg()[0]
    out.write_text(json.dumps(res, indent=2))
    per_seed[seed] = res
    print(f"seed {seed}: {res['train_minutes']:.1f} min training, test DCG "
          f"{res['dcg_accuracy']:.4f}, diffusion {res['diffusion_accuracy']:.4f}, swapped "
          f"{res['shuffled_encoder_accuracy']:.4f}, agreement {res['agreement']:.4f}", flush=True)

  summary = {k: _stats([r[k] for r in per_seed.values()]) for k in SUMMARY_KEYS}
  print(f"\nofficial DiffMIC, {config_flags.get_config_filename(f['config'])}; test split (n = {sizes['test']}); checkpoint "
        f'chosen by the official trainer on validation (n = {sizes["validation"]}); '
        f'{num_samples} sample(s) per image, official truncated {y["diffusion"]["test_timesteps"]}'
        f'-step chain; seeds {list(per_seed)}')
  for k in SUMMARY_KEYS:
    s = summary[k]
    print(f"{k:32s} {s['mean']:9.4f} ± {s['std']:.4f}   " + ' '.join(f'{v:.4f}' for v in s['values']))
  name = f.name + ('_smoke' if f.smoke else '')
  path = pathlib.Path(f.out) if f.out else (
      work if f.smoke else REPO / 'bench' / 'results') / f'official_train_{name}.json'
  path.parent.mkdir(parents=True, exist_ok=True)
  recipe = {k: _get(c, k) for k in RECIPE_FIELDS}
  print_epochs(per_seed)
  path.write_text(json.dumps({
      'command': ' '.join(['python', 'bench/official_train.py', *sys.argv[1:]]),
      'date': time.strftime('%Y-%m-%d', time.gmtime()), 'commit': commit,
      'official_repo': 'github scott-yjyang/DiffMIC', 'official_commit': f.official_commit,
      'smoke': f.smoke, 'seeds': list(per_seed), 'split_sizes': sizes,
      'torch': torch.__version__, 'threads': torch.get_num_threads(), 'patches': PATCHES,
      'stubs': stubs, 'recipe': recipe, 'recipe_differences': differences, 'official_yml': y,
      'port_config': c.to_dict(), 'port_commands': port_commands(f.seeds, f.name),
      'summary': summary,
      'per_seed': {str(s): r for s, r in per_seed.items()}}, indent=2, default=str))
  print(f'wrote {path}')


def _define_flags():
  config_flags.DEFINE_config_file('config', 'configs/reduced.py:aptos',
                                  "The port's recipe (configs/*.py[:arg]).", lock_config=True)
  flags.DEFINE_string('official_dir', os.environ.get('OFFICIAL_DIR', str(REPO / '.official')),
                      'Checkout of scott-yjyang/DiffMIC (default $OFFICIAL_DIR, else .official).')
  flags.DEFINE_string('official_commit', None, 'Its commit, recorded in the JSON.')
  flags.DEFINE_string('torchvision', None, 'A torchvision package folder loaded without its '
                      'compiled operators; default: import torchvision.')
  flags.DEFINE_string('seeds', '0,1,2', 'Comma-separated seeds, each a separate run.')
  flags.DEFINE_string('workdir', None, 'Lists, yml and runs (<workdir>/seed<N>).', required=True)
  flags.DEFINE_string('name', 'aptos2019_32', 'Result name.')
  flags.DEFINE_string('out', None, 'JSON path (default bench/results/official_train_<name>.json).')
  flags.DEFINE_integer('threads', 1, 'torch.set_num_threads (the chains are many small ops).')
  flags.DEFINE_integer('num_samples', None, 'Test draws per image (default config.eval.num_samples).')
  flags.DEFINE_boolean('smoke', False, 'Tiny subsets and chains: a check of the set-up, in seconds.')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
