"""Official DiffMIC (PyTorch) speed: the same measurements as train_speed.py / sampling_speed.py.

Times the published PyTorch code (github scott-yjyang/DiffMIC), imported from --official_dir and never
copied here, on the official APTOS config (configs/aptos.yml): batch 32, 224 px, ResNet50 DCG, random
weights, real APTOS images (the first 32 of aptos2019_224/images, labels arange % 5, as
train_speed.real_batch). Measured, each as the official code does it:

  dcg_pretrain   one DCG pre-training iteration: Diffusion.nonlinear_guidance_model_train_step
                 (forward, CE on y_fusion, backward, Adam amsgrad step), DCG in train mode
  joint          one iteration of the body of Diffusion.train()'s epoch loop: per-iteration LR, DCG
                 eval forward for the priors (with autograd, as the official code), antithetic t,
                 three q_sample + three epsilon-network forwards, MSE + 0.5 (MMD_g + MMD_l),
                 backward, grad-norm clip 1.0, Adam step, EMA update, then the DCG update step
  test_chain_60  one test() batch: two DCG forwards, then p_sample_loop with test_timesteps = 60
                 (the ResNet18 encoder re-run at every step), under no_grad, models in eval mode

Steady-state median of --steps after one warm-up; peak memory (CPU: the process's ru_maxrss, a
running maximum, read after each phase; CUDA: torch.cuda.max_memory_allocated per phase). On CUDA
every timing is bracketed by torch.cuda.synchronize() and the whole set is run twice, with
torch.backends.cudnn.benchmark False and True (the official main.py sets it True).

    python bench/official_speed.py [--device=cpu|cuda] [--threads=2] [--steps=3]

Get the official code once (it is never committed; /.official/ is in .git/info/exclude):
    mkdir -p .official && git --git-dir=<bare DiffMIC clone> archive HEAD | tar -x -C .official
    git --git-dir=<bare DiffMIC clone> rev-parse HEAD > .official/.official_commit  # for the JSON

What is changed on the official code at run time, and nothing else:
  * pretraining.modules.resnet50 is replaced by torchvision resnet50(weights=None): the official
    call is resnet50(pretrained=True), an ImageNet download; the benchmark uses random weights.
    Downloads are also made to fail loudly.
  * on CPU only, the DCG's hard-coded 'cuda:0' (dcg.py experiment_parameters, RetrieveROIModule)
    is switched to CPU; on CUDA it is left as is.
  * import-time stubs (bench/official_code.py) for modules the official files import but never use
    on these paths: dataloader.loading (the official data pipeline: cv2, skimage, imageio; always
    stubbed, the images are fed as tensors), torchvision.models.densenet and timm.models (encoders
    not used), matplotlib.pyplot and statsmodels.api (stubbed only if missing).

Prints a table and writes bench/results/official_speed_<device>.json.
"""

import argparse
import json
import logging
import math
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

from bench import official_code  # noqa: E402

# Reference figures for the official PyTorch code on a 2-core CPU (the same as in train_speed.py /
# sampling_speed.py); this script's own run is compared against them.
REFERENCE_FIGURES = {'dcg_pretrain_s': 8.1, 'joint_s': 22.5, 'test_chain_60_s_per_batch': 66.8,
                 'joint_peak_gb': 10.1}


def import_official(official_dir: pathlib.Path):
  """Imports the official modules from official_dir (bench/official_code.py); returns (modules
  namespace, stubs applied)."""
  if not (official_dir / 'diffusion_trainer.py').is_file():
    raise SystemExit(f'no official DiffMIC code in {official_dir}: '
                     'git --git-dir=<bare clone> archive HEAD | tar -x -C .official')
  # dataloader.loading (the official data pipeline) is an empty module: the images are fed as
  # tensors.
  ns, stubs = official_code.import_official(official_dir, data_pipeline=False)
  import torch
  import torchvision

  # Random weights: the official DownsampleNetworkResNet18V1 calls resnet50(pretrained=True).
  def resnet50_random(pretrained=False, **kwargs):
    del pretrained
    return torchvision.models.resnet50(weights=None, **kwargs)
  ns.modules.resnet50 = resnet50_random

  def no_download(*a, **k):
    raise RuntimeError(f'official_speed.py: weight download attempted ({a[:1]}); weights are random')
  torch.hub.load_state_dict_from_url = no_download
  import torchvision.models._api as tv_api
  if hasattr(tv_api, 'load_state_dict_from_url'):
    tv_api.load_state_dict_from_url = no_download
  return ns, stubs


def load_batch(data_root: pathlib.Path, batch: int):
  """The train_speed.real_batch images as the official loader would give them: float NCHW,
  ToTensor scaling, ImageNet Normalize; int64 labels."""
  import torch
  from torchvision.transforms import functional as TF
  sys.path.insert(1, str(REPO))
  from bench.train_speed import real_batch
  b = real_batch(data_root, batch)
  x = torch.from_numpy(b['image']).permute(0, 3, 1, 2).float().div(255.0)
  x = TF.normalize(x, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
  return x.contiguous(), torch.from_numpy(b['label']).long()


class Bench:
  def __init__(self, args, off):
    import torch
    import yaml
    self.torch, self.off, self.args = torch, off, args
    self.device = torch.device(args.device)
    cfg = yaml.safe_load((pathlib.Path(args.official_dir) / 'configs' / 'aptos.yml').read_text())
    cfg['training']['batch_size'] = cfg['testing']['batch_size'] = args.batch
    self.config = off.utils.dict2namespace(cfg)
    # What main.py adds to the yml config for a training run without --noise_prior/--no_cat_f_phi
    # (test() reads the config.yml that training saved, so the same values).
    self.config.diffusion.noise_prior = False
    self.config.model.cat_y_pred = True
    self.config.device = self.device
    self.config.tb_logger = None
    # The CLI flags the official loop reads (main.py defaults; run_aptos.sh passes no --add_ce_loss).
    self.run_args = argparse.Namespace(add_ce_loss=False, train_guidance_only=False,
                                       resume_training=False, log_path=None)
    torch.manual_seed(1234)  # main.py --seed default
    self.diffusion = off.trainer.Diffusion(self.run_args, self.config, device=self.device)
    dcg = self.diffusion.cond_pred_model
    if self.device.type != 'cuda':
      # The DCG hard-codes cuda:0 for its crop buffer and ROI masks; on CPU point both at the CPU.
      dcg.experiment_parameters['device_type'] = 'cpu'
      dcg.retrieve_roi_crops.gpu_number = None
    # As Diffusion.train() builds them.
    self.model = off.model.ConditionalModel(self.config, guidance=self.config.diffusion.include_guidance)
    self.model = self.model.to(self.device)
    self.optimizer = off.utils.get_optimizer(self.config.optim, self.model.parameters())
    self.aux_optimizer = off.utils.get_optimizer(self.config.aux_optim, dcg.parameters())
    self.ema_helper = None
    if self.config.model.ema:
      self.ema_helper = off.ema.EMA(mu=self.config.model.ema_rate)
      self.ema_helper.register(self.model)
    self.x_batch, self.y_labels_batch = load_batch(pathlib.Path(args.data_root), args.batch)
    self.step = 0  # the official loop's global step counter
    self.epoch, self.i, self.n_batches = 1, 0, math.ceil(2564 / args.batch)  # APTOS train: 2564

  def sync(self):
    if self.device.type == 'cuda':
      self.torch.cuda.synchronize()

  # --- one DCG pre-training iteration (Diffusion.train(), "pre-train the guidance auxiliary
  # classifier" loop body) ---
  def dcg_pretrain_iter(self):
    d, config = self.diffusion, self.config
    d.cond_pred_model.train()
    y_one_hot_batch, _ = self.off.utils.cast_label_to_one_hot_and_prototype(self.y_labels_batch, config)
    return d.nonlinear_guidance_model_train_step(self.x_batch.to(self.device),
                                                 y_one_hot_batch.to(self.device), self.aux_optimizer)

  # --- one joint-training iteration: the body of Diffusion.train()'s `for i, ... in
  # enumerate(train_loader)` loop, statement for statement (checkpoint saving at step 1 and the
  # tensorboard logger are left out: I/O, not compute) ---
  def joint_iter(self):
    torch, d, config, off = self.torch, self.diffusion, self.config, self.off
    model, optimizer = self.model, self.optimizer
    x_batch, y_labels_batch = self.x_batch, self.y_labels_batch
    y_one_hot_batch, y_logits_batch = off.utils.cast_label_to_one_hot_and_prototype(y_labels_batch, config)
    if config.optim.lr_schedule:
      off.utils.adjust_learning_rate(optimizer, self.i / self.n_batches + self.epoch, config)
    n = x_batch.size(0)
    x_unflat_batch = x_batch.to(self.device)
    model.train()
    d.cond_pred_model.eval()
    self.step += 1
    t = torch.randint(low=0, high=d.num_timesteps, size=(n // 2 + 1,)).to(self.device)
    t = torch.cat([t, d.num_timesteps - 1 - t], dim=0)[:n]
    x_batch = x_batch.to(self.device)
    y_0_hat_batch, y_0_global, y_0_local = d.compute_guiding_prediction(x_unflat_batch)
    y_0_hat_batch = y_0_hat_batch.softmax(dim=1)
    y_0_global, y_0_local = y_0_global.softmax(dim=1), y_0_local.softmax(dim=1)
    y_T_mean = y_0_hat_batch
    y_0_batch = y_one_hot_batch.to(self.device)
    e = torch.randn_like(y_0_batch).to(y_0_batch.device)
    q_sample = off.dutils.q_sample
    y_t_batch = q_sample(y_0_batch, y_T_mean, d.alphas_bar_sqrt, d.one_minus_alphas_bar_sqrt, t, noise=e)
    y_t_batch_global = q_sample(y_0_batch, y_0_global, d.alphas_bar_sqrt, d.one_minus_alphas_bar_sqrt,
                                t, noise=e)
    y_t_batch_local = q_sample(y_0_batch, y_0_local, d.alphas_bar_sqrt, d.one_minus_alphas_bar_sqrt,
                               t, noise=e)
    output = model(x_batch, y_t_batch, t, y_0_hat_batch)
    output_global = model(x_batch, y_t_batch_global, t, y_0_global)
    output_local = model(x_batch, y_t_batch_local, t, y_0_local)
    mmd = off.dutils.compute_mmd
    loss = (e - output).square().mean() + 0.5 * (mmd(e, output_global) + mmd(e, output_local))
    loss0 = torch.tensor([0])
    if self.step % config.training.logging_freq == 0 or self.step == 1:
      logging.info(f'epoch: {self.epoch}, step: {self.step}, CE loss: {loss0.item()}, '
                   f'Noise Estimation loss: {loss.item()}')
    optimizer.zero_grad()
    loss.backward()
    try:
      torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
    except Exception:
      pass
    optimizer.step()
    if config.model.ema:
      self.ema_helper.update(model)
    if config.diffusion.apply_aux_cls and config.diffusion.aux_cls.joint_train:
      d.cond_pred_model.train()
      aux_loss = d.nonlinear_guidance_model_train_step(x_unflat_batch, y_0_batch, self.aux_optimizer)
      if self.step % config.training.logging_freq == 0 or self.step == 1:
        logging.info(f'meanwhile, guidance auxiliary classifier joint-training loss: {aux_loss}')
    self.i = (self.i + 1) % self.n_batches
    return loss

  # --- one test() batch: the body of Diffusion.test()'s loop up to label_t_0.softmax (metrics
  # left out) ---
  def test_chain(self):
    torch, d, config = self.torch, self.diffusion, self.config
    self.model.eval()
    d.cond_pred_model.eval()
    images_unflat = self.x_batch.to(self.device)
    images = self.x_batch.to(self.device)
    with torch.no_grad():
      target_pred, y_global, y_local = d.compute_guiding_prediction(images_unflat)
      target_pred = target_pred.softmax(dim=1)
      y_T_mean = target_pred
      if not config.diffusion.noise_prior:
        target_pred, y_global, y_local = d.compute_guiding_prediction(images_unflat)
        target_pred = target_pred.softmax(dim=1)
      label_t_0 = self.off.dutils.p_sample_loop(self.model, images, target_pred, y_T_mean,
                                                d.test_num_timesteps, d.alphas,
                                                d.one_minus_alphas_bar_sqrt, only_last_sample=True)
      label_t_0 = label_t_0.softmax(dim=-1)
    return label_t_0

  def measure(self, fn, steps: int) -> dict:
    self.sync()
    t0 = time.perf_counter()
    fn()
    self.sync()
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
      self.sync()
      t0 = time.perf_counter()
      fn()
      self.sync()
      times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {'first_s': first, 'step_s': med, 'all_s': times, 'img_s': self.args.batch / med}


def peak_gb(torch, device) -> float:
  if device.type == 'cuda':
    return torch.cuda.max_memory_allocated(device) / 2**30
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def run_phases(b: Bench, steps: int, log) -> dict:
  torch, cuda = b.torch, b.device.type == 'cuda'
  out = {}
  for name, fn in [('dcg_pretrain', b.dcg_pretrain_iter), ('joint', b.joint_iter),
                   ('test_chain_60', b.test_chain)]:
    if cuda:
      torch.cuda.reset_peak_memory_stats(b.device)
    m = b.measure(fn, steps)
    m['peak_memory_gb'] = peak_gb(torch, b.device)
    m['load_avg_1m_after'] = os.getloadavg()[0]  # other work on the host inflates CPU timings
    if name == 'test_chain_60':
      m['batch_s'] = m['step_s']
      m['s_per_image'] = m['step_s'] / b.args.batch
      m['reverse_steps'] = b.diffusion.test_num_timesteps
    out[name] = m
    log(f"  {name:14s} first {m['first_s']:8.2f} s, median {m['step_s']:8.2f} s over "
        f"{steps}, peak {m['peak_memory_gb']:.2f} GB, load {m['load_avg_1m_after']:.1f}")
  return out


def table(r: dict) -> str:
  lines = []
  for setting, ph in r['runs'].items():
    lines.append(f'[{setting}]')
    lines.append(f"{'phase':24s} {'first s':>8s} {'s/iter':>8s} {'img/s':>7s} {'peak GB':>8s} "
                 f"{'ref s':>8s} {'ratio':>6s}")
    for name, label, ref in [('dcg_pretrain', 'DCG pre-training iter', REFERENCE_FIGURES['dcg_pretrain_s']),
                             ('joint', 'joint iter', REFERENCE_FIGURES['joint_s']),
                             ('test_chain_60', '60-step chain (batch)',
                              REFERENCE_FIGURES['test_chain_60_s_per_batch'])]:
      m = ph[name]
      lines.append(f"{label:24s} {m['first_s']:8.2f} {m['step_s']:8.2f} {m['img_s']:7.2f} "
                   f"{m['peak_memory_gb']:8.2f} {ref:8.1f} {m['step_s'] / ref:5.2f}x")
  lines.append(f"peak memory: {r['peak_memory_gb']:.2f} GB ({r['peak_memory_kind']}); reference "
               f"{REFERENCE_FIGURES['joint_peak_gb']} GB (CPU). 'ratio' = measured / reference (CPU figures).")
  return '\n'.join(lines)


def main(argv):
  del argv
  args = flags.FLAGS

  def log(s):
    print(s, flush=True)

  off, stubs = import_official(pathlib.Path(args.official_dir).resolve())
  import torch
  import torchvision
  if args.device == 'auto':
    args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
  if args.device == 'cpu':
    torch.set_num_threads(args.threads)
  official_dir = pathlib.Path(args.official_dir).resolve()
  imported = sorted(str(pathlib.Path(m.__file__).resolve().relative_to(official_dir))
                    for m in list(sys.modules.values())
                    if getattr(m, '__file__', None) and not m.__file__.startswith('<')
                    and pathlib.Path(m.__file__).resolve().is_relative_to(official_dir))
  git_head = official_dir / '.official_commit'
  res = {'batch': args.batch, 'image_size': 224, 'dcg_backbone': 'resnet50 (official)',
         'eps_encoder': 'resnet18', 'device': args.device,
         'device_name': (torch.cuda.get_device_name(0) if args.device == 'cuda'
                         else platform.processor() or platform.machine()),
         'threads': torch.get_num_threads() if args.device == 'cpu' else None,
         'torch': torch.__version__, 'torchvision': torchvision.__version__,
         'python': platform.python_version(), 'steps': args.steps,
         'official_repo': 'github scott-yjyang/DiffMIC',
         'official_commit': git_head.read_text().strip() if git_head.is_file() else None,
         'official_files_imported': imported, 'stubs': stubs,
         'reference_figures_cpu': REFERENCE_FIGURES, 'load_avg_1m_start': os.getloadavg()[0],
         'cpu_count': os.cpu_count()}
  log(f"official DiffMIC, batch {args.batch}, 224 px, {res['device_name']} ({args.device}"
      f"{', %d threads' % res['threads'] if res['threads'] else ''}), torch {torch.__version__}")
  log('official files imported: ' + ', '.join(imported))
  log('stubs: ' + ('; '.join(stubs) or 'none'))

  b = Bench(args, off)
  res['params_m'] = {'eps': sum(q.numel() for q in b.model.parameters()) / 1e6,
                     'dcg': sum(q.numel() for q in b.diffusion.cond_pred_model.parameters()) / 1e6}
  settings = ['default'] if args.device == 'cpu' else ['cudnn_benchmark_off', 'cudnn_benchmark_on']
  res['runs'] = {}
  for s in settings:
    if args.device == 'cuda':
      torch.backends.cudnn.benchmark = s.endswith('_on')
    log(f'[{s}]')
    res['runs'][s] = run_phases(b, args.steps, log)
  # Top-level summary, in train_speed.py's / sampling_speed.py's shape: the last setting run.
  last = res['runs'][settings[-1]]
  res['dcg_pretrain'], res['joint'], res['test_chain_60'] = (
      last['dcg_pretrain'], last['joint'], last['test_chain_60'])
  if args.device == 'cuda':
    res['peak_memory_gb'] = max(m['peak_memory_gb'] for ph in res['runs'].values() for m in ph.values())
    res['peak_memory_kind'] = 'torch.cuda.max_memory_allocated, largest phase'
  else:
    res['peak_memory_gb'] = peak_gb(torch, b.device)
    res['peak_memory_kind'] = 'process ru_maxrss (CPU), whole run'
  print(table(res))
  out = pathlib.Path(args.out or REPO / 'bench' / 'results' / f'official_speed_{args.device}.json')
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(res, indent=2))
  log(f'wrote {out}')


def _define_flags():
  flags.DEFINE_enum('device', 'auto', ['auto', 'cpu', 'cuda'], 'Where torch runs.')
  flags.DEFINE_integer('threads', 2, 'torch.set_num_threads on CPU.')
  flags.DEFINE_integer('steps', 3, 'Timed iterations after one warm-up.')
  flags.DEFINE_integer('batch', 32, 'Batch size.')
  flags.DEFINE_string('official_dir', str(REPO / '.official'), 'Checkout of the official code.')
  flags.DEFINE_string('data_root', str(REPO.parent / 'shared' / 'data'), 'Real images.')
  flags.DEFINE_string('out', None, 'JSON path.')

if __name__ == '__main__':
  _define_flags()
  app.run(main)
