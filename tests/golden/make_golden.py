"""Writes tests/golden/*.npz: the official DiffMIC PyTorch modules' numbers on shared weights.

Run once, by hand (needs torch; not collected by pytest):

    python tests/golden/make_golden.py --official=/path/to/DiffMIC \
        --torchvision=/path/to/site-packages/torchvision --data=../shared/data/aptos2019_224

`--official` is a checkout of scott-yjyang/DiffMIC; its modules are imported from there, never
copied. `--torchvision` is a torchvision package folder whose pure-Python `models/resnet.py` is
loaded without its compiled operators (for a torchvision built for another torch); leave it out
when `import torchvision` works. The official trunks are torchvision ResNets built with
torchvision's own blocks at base width 8, one block per stage, to match the port's `resnet_tiny`;
every other official layer is used as the official code builds it, with the DCG's hard-coded
2048-wide layers re-made at the trunk's width and the 7x7 saliency grid set to the 3x3 grid of a
96 px input. The weights come from tests/golden_setup.py (Flax init + seeded BatchNorm values) and
are copied into the torch modules; only outputs are saved.
"""

import argparse
import pathlib
import sys
import types

import numpy as np

TESTS = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS), str(TESTS.parent)]

import golden_setup as gs  # pylint: disable=wrong-import-position
from bench import official_code  # pylint: disable=wrong-import-position
import torch  # pylint: disable=wrong-import-position
from torch import nn  # pylint: disable=wrong-import-position

SMALL = 1200  # Leaves up to this size are saved whole; larger ones through their norms only.
CE_WEIGHT = 0.01  # The official lambda_ce (commented out in its configs).


def _import_official(official: str, torchvision_dir: str | None):
  off, _ = official_code.import_official(official, torchvision_dir)
  return off.dutils, off.model, types.SimpleNamespace(dcg=off.dcg, modules=off.modules), off.resnet


def _narrow_resnet(resnet, width):
  """torchvision's ResNet and BasicBlock, one block per stage, at base width `width`."""
  return official_code.narrow_resnet(resnet, width, blocks=(1, 1, 1, 1))


# ---- torch state-dict name <-> Flax path ----
_TRUNK = {'0': 'conv1', '1': 'bn1', '4': 'layer1', '5': 'layer2', '6': 'layer3', '7': 'layer4'}
_BN = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
       'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}


def _trunk(prefix, rest):
  parts = rest.split('.')
  head = _TRUNK[parts[0]]
  if not head.startswith('layer'):
    return [prefix, head], parts[1], 'conv' if head == 'conv1' else 'bn'
  block, module = f'{head}_{parts[1]}', parts[2]
  if module == 'downsample':
    module, leaf = {'0': 'downsample_conv', '1': 'downsample_bn'}[parts[3]], parts[4]
  else:
    leaf = parts[3]
  return [prefix, block, module], leaf, 'conv' if 'conv' in module else 'bn'


def _dcg_name(key):
  if key.startswith(('ds_net.f.', 'dn_resnet.f.')):
    owner, rest = key.split('.f.', 1)
    return _trunk({'ds_net': 'global_net', 'dn_resnet': 'local_net'}[owner], rest)
  module, leaf = key.rsplit('.', 1)
  return {'left_postprocess_net.gn_conv_last': (['saliency_conv'], leaf, 'conv'),
          'mil_attn_U': (['attention', 'U'], leaf, 'linear'),
          'mil_attn_V': (['attention', 'V'], leaf, 'linear'),
          'mil_attn_w': (['attention', 'w'], leaf, 'linear'),
          'classifier_linear': (['local_head'], leaf, 'linear')}[module]


def _eps_name(key):
  if key.startswith('encoder_x.f.'):
    return _trunk('encoder', key[len('encoder_x.f.'):])
  module, leaf = key.rsplit('.', 1)
  if module == 'encoder_x.g':
    return ['project'], leaf, 'linear'
  if module == 'norm':
    return ['feature_bn'], leaf, 'bn'
  if module.startswith('unetnorm'):
    return [f'norms_{int(module[-1]) - 1}'], leaf, 'bn'
  if module == 'lin4':
    return ['out'], leaf, 'linear'
  i = int(module[3]) - 1  # lin1..lin3: ConditionalLinear.
  if module.endswith('.embed'):
    return [f'layers_{i}', 'embed'], leaf, 'embed'
  return [f'layers_{i}', 'linear'], leaf, 'linear'


def _flax_key(name_fn, key):
  """(collection, 'a/b/leaf', kind), or None for num_batches_tracked."""
  path, leaf, kind = name_fn(key)
  if leaf == 'num_batches_tracked':
    return None
  if kind == 'bn':
    collection, leaf = _BN[leaf]
  else:
    collection = 'params'
    leaf = {'weight': {'conv': 'kernel', 'linear': 'kernel', 'embed': 'embedding'}[kind],
            'bias': 'bias'}[leaf]
  return collection, '/'.join(path + [leaf]), kind


def _to_torch(value, kind):
  value = np.asarray(value, np.float32)
  if kind == 'conv':
    return value.transpose(3, 2, 0, 1)
  return value.T if kind == 'linear' and value.ndim == 2 else value


def _to_flax(value, kind):
  value = value.detach().numpy().astype(np.float32)
  if kind == 'conv':
    return value.transpose(2, 3, 1, 0)
  return value.T if kind == 'linear' and value.ndim == 2 else value


def load_flax(module, name_fn, variables):
  from flax import traverse_util  # pylint: disable=import-outside-toplevel
  flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(variables, sep='/').items()}
  state = module.state_dict()
  for key, tensor in state.items():
    target = _flax_key(name_fn, key)
    if target is None:
      continue
    collection, path, kind = target
    value = _to_torch(flat.pop(f'{collection}/{path}'), kind)
    assert value.shape == tuple(tensor.shape), (key, value.shape, tensor.shape)
    tensor.copy_(torch.from_numpy(value.copy()))
  assert not flat, f'Flax leaves without a torch tensor: {sorted(flat)}'


def read_flax(module, name_fn, what):
  """{prefix/path: array} of 'params', 'grads' or 'batch_stats' in Flax layout."""
  out = {}
  named = dict(module.named_parameters())
  for key, tensor in module.state_dict().items():
    target = _flax_key(name_fn, key)
    if target is None:
      continue
    collection, path, kind = target
    if what == 'batch_stats' and collection == 'batch_stats':
      out[path] = _to_flax(tensor, kind)
    elif what == 'params' and collection == 'params':
      out[path] = _to_flax(tensor, kind)
    elif what == 'grads' and collection == 'params':
      grad = named[key].grad
      out[path] = _to_flax(grad if grad is not None else torch.zeros_like(tensor), kind)
  return out


def _compact(prefix, leaves):
  """Small leaves whole, every leaf's norm, and the global norm."""
  out = {f'{prefix}/{k}': v for k, v in leaves.items() if v.size <= SMALL}
  out.update({f'{prefix}_norm/{k}': np.float32(np.linalg.norm(v)) for k, v in leaves.items()})
  out[f'{prefix}_global_norm'] = np.float32(np.sqrt(sum(np.sum(np.square(v, dtype=np.float64))
                                                        for v in leaves.values())))
  return out


def official_modules(off, config):
  diffusion_utils, model, pretraining, resnet = off
  pretraining.modules.resnet50 = lambda pretrained=False: _narrow_resnet(resnet, gs.WIDTH)
  model.resnet18 = lambda: _narrow_resnet(resnet, gs.WIDTH)
  ns = types.SimpleNamespace
  k, c = gs.NUM_CLASSES, 8 * gs.WIDTH
  grid = gs.IMAGE_SIZE // 32
  dcg = official_code.narrow_dcg(pretraining.dcg.DCG(ns(data=ns(num_classes=k))), c, k, grid, 32)
  eps = model.ConditionalModel(
      ns(diffusion=ns(timesteps=gs.TIMESTEPS), data=ns(num_classes=k),
         model=ns(data_dim=None, arch='resnet18', feature_dim=gs.FEATURE_DIM, hidden_dim=None)),
      guidance=True)
  betas = diffusion_utils.make_beta_schedule(
      config.diffusion.beta_schedule, gs.TIMESTEPS, config.diffusion.beta_start,
      config.diffusion.beta_end).float()
  alphas = 1.0 - betas
  cumprod = alphas.cumprod(dim=0)
  schedule = ns(alphas=alphas, alphas_bar_sqrt=torch.sqrt(cumprod),
                one_minus_alphas_bar_sqrt=torch.sqrt(1 - cumprod))
  return dcg, eps, schedule


def _inputs(data_dir: pathlib.Path):
  """Four real APTOS train images of four grades, resized to IMAGE_SIZE, and their labels."""
  import csv  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  rows, seen = [], set()
  with open(data_dir / 'labels.csv', newline='') as f:
    for row in csv.DictReader(f):
      if row['diffmic_split'] == 'train' and row['label'] not in seen:
        seen.add(row['label'])
        rows.append(row)
      if len(rows) == 4:
        break
  size = (gs.IMAGE_SIZE, gs.IMAGE_SIZE)
  images = np.stack([np.asarray(Image.open(data_dir / r['file']).convert('RGB').resize(
      size, Image.BILINEAR)) for r in rows])
  return images, np.array([int(r['label']) for r in rows], np.int32), [r['image_id'] for r in rows]


def _nchw(images_uint8):
  from diffmic_jax.data.normalize import normalize  # pylint: disable=import-outside-toplevel
  return torch.from_numpy(np.asarray(normalize(images_uint8)).transpose(0, 3, 1, 2).copy())


def _dcg_outputs(dcg, x, tag):
  fused, glob, local = dcg(x)
  return {f'{tag}/logits': fused, f'{tag}/logits_global': glob, f'{tag}/logits_local': local,
          f'{tag}/saliency': dcg.saliency_map.permute(0, 2, 3, 1),
          f'{tag}/roi_corners': torch.from_numpy(dcg.patch_locations.astype(np.float32)),
          f'{tag}/attention': dcg.patch_attns}


def _numpy(d):
  return {k: (v.detach().numpy() if torch.is_tensor(v) else np.asarray(v)).astype(np.float32)
          for k, v in d.items()}


def golden_dcg(dcg, images):
  """DCG forward in eval and train mode, and the batch statistics train mode leaves."""
  load_flax(dcg, _dcg_name, gs.dcg_variables())
  x = _nchw(images)
  with torch.no_grad():
    dcg.eval()
    out = _dcg_outputs(dcg, x, 'eval')
    dcg.train()
    out.update(_dcg_outputs(dcg, x, 'train'))
  out.update({f'batch_stats/{k}': v for k, v in read_flax(dcg, _dcg_name, 'batch_stats').items()})
  return _numpy(out)


def _eps_inputs():
  rng = np.random.default_rng(3)
  y_hat = torch.softmax(torch.from_numpy(rng.standard_normal((4, gs.NUM_CLASSES), np.float32)), 1)
  y_t = torch.from_numpy(rng.standard_normal((4, gs.NUM_CLASSES)).astype(np.float32))
  t = torch.from_numpy(np.array([0, 17, 500, 999]))
  return y_t, y_hat, t


def golden_eps(eps, images):
  """Epsilon network forward in eval and train mode, and its train-mode batch statistics."""
  load_flax(eps, _eps_name, gs.eps_variables())
  x = _nchw(images)
  y_t, y_hat, t = _eps_inputs()
  with torch.no_grad():
    eps.eval()
    out = {'y_t': y_t, 'y_hat': y_hat, 't': t, 'eval/eps': eps(x, y_t, t, y_hat)}
    eps.train()
    out['train/eps'] = eps(x, y_t, t, y_hat)
  out.update({f'batch_stats/{k}': v for k, v in read_flax(eps, _eps_name, 'batch_stats').items()})
  return _numpy(out)


def _port_draws(key_seed, batch):
  """Timesteps and noise as the port's diffusion_loss draws them from its key."""
  import jax  # pylint: disable=import-outside-toplevel
  from diffmic_jax.diffusion import antithetic_timesteps  # pylint: disable=import-outside-toplevel
  k_t, k_noise = jax.random.split(jax.random.key(key_seed))
  t = antithetic_timesteps(k_t, batch, gs.TIMESTEPS)
  noise = jax.random.normal(k_noise, (batch, gs.NUM_CLASSES))
  return torch.from_numpy(np.asarray(t).astype(np.int64)), torch.from_numpy(np.array(noise))


def _eps_iteration(off, eps, schedule, x, labels, priors, t, noise, add_ce):
  """The official trainer's epsilon-network loss for one batch; backward into eps."""
  diffusion_utils = off[0]
  y_hat, y_g, y_l = priors
  y0 = nn.functional.one_hot(labels, gs.NUM_CLASSES).float()
  q = lambda mean: diffusion_utils.q_sample(y0, mean, schedule.alphas_bar_sqrt,
                                            schedule.one_minus_alphas_bar_sqrt, t, noise=noise)
  y_t, y_t_g, y_t_l = q(y_hat), q(y_g), q(y_l)
  eps.train()
  out, out_g, out_l = eps(x, y_t, t, y_hat), eps(x, y_t_g, t, y_g), eps(x, y_t_l, t, y_l)
  mse = (noise - out).square().mean()
  mmd_g = diffusion_utils.compute_mmd(noise, out_g)
  mmd_l = diffusion_utils.compute_mmd(noise, out_l)
  loss = mse + 0.5 * (mmd_g + mmd_l)
  ce = torch.zeros(())
  if add_ce:
    y0_reparam = diffusion_utils.y_0_reparam(eps, x, y_t, y_hat, y_hat, t,
                                             schedule.one_minus_alphas_bar_sqrt)
    ce = nn.CrossEntropyLoss()(-(y0_reparam - 1) ** 2, labels)
    loss = loss + CE_WEIGHT * ce
  eps.zero_grad()
  loss.backward()
  return {'loss': loss, 'mse': mse, 'mmd_global': mmd_g, 'mmd_local': mmd_l, 'y0_ce': ce}


def _aux_optimizer(official, dcg):
  """The official DCG optimizer as utils.get_optimizer builds it from configs/aptos.yml."""
  import yaml  # pylint: disable=import-outside-toplevel
  cfg = yaml.safe_load((pathlib.Path(official) / 'configs' / 'aptos.yml').read_text())['aux_optim']
  assert cfg['optimizer'] == 'Adam'
  return torch.optim.Adam(dcg.parameters(), lr=cfg['lr'], weight_decay=cfg['weight_decay'],
                          betas=(cfg['beta1'], 0.999), amsgrad=cfg['amsgrad'], eps=cfg['eps'])


def golden_joint(off, official, dcg, eps, schedule, images, labels):
  """One joint step: the epsilon-network loss and gradients (official CE term on), then
  DCG_STEPS official DCG updates on the same batch."""
  load_flax(dcg, _dcg_name, gs.dcg_variables())
  load_flax(eps, _eps_name, gs.eps_variables())
  x, y = _nchw(images), torch.from_numpy(labels.astype(np.int64))
  t, noise = _port_draws(gs.JOINT_KEY, len(labels))
  dcg.eval()
  with torch.no_grad():
    priors = [p.softmax(dim=1) for p in dcg(x)]
  out = {'t': t, 'noise': noise}
  out.update(_eps_iteration(off, eps, schedule, x, y, priors, t, noise, add_ce=True))
  grads = read_flax(eps, _eps_name, 'grads')
  heads = {k: v for k, v in read_flax(eps, _eps_name, 'batch_stats').items()
           if k.startswith('norms_')}
  load_flax(eps, _eps_name, gs.eps_variables())
  _eps_iteration(off, eps, schedule, x, y, priors, t, noise, add_ce=False)
  without = read_flax(eps, _eps_name, 'grads')
  out['ce_grad_effect'] = max(float(np.max(np.abs(grads[k] - without[k]))) for k in grads)
  out.update(_compact('eps_grads', grads))
  out.update({f'eps_head_stats/{k}': v for k, v in heads.items()})
  # Embedding rows are only touched at the batch's timesteps: keep those rows.
  for i in range(3):
    key = f'layers_{i}/embed/embedding'
    out[f'eps_grads_rows/{key}'] = grads[key][t.numpy()]
  out.update(_dcg_steps(official, dcg, x, y))
  return _numpy(out)


def _dcg_steps(official, dcg, x, y):
  start = read_flax(dcg, _dcg_name, 'params')
  optimizer = _aux_optimizer(official, dcg)
  out = {}
  for step in range(gs.DCG_STEPS):
    dcg.train()
    fused, _, _ = dcg(x)
    cost = nn.CrossEntropyLoss()(fused, y)
    optimizer.zero_grad()
    cost.backward()
    optimizer.step()
    out[f'dcg_ce/{step}'] = cost
    if step == 0:
      out.update(_compact('dcg_grads', read_flax(dcg, _dcg_name, 'grads')))
      out.update({f'dcg_step1/{k}': v for k, v in
                  _compact('delta', _delta(dcg, start)).items()})
  out.update(_compact('dcg_delta', _delta(dcg, start)))
  out.update({f'dcg_batch_stats/{k}': v
              for k, v in read_flax(dcg, _dcg_name, 'batch_stats').items()})
  return out


def _delta(dcg, start):
  return {k: v - start[k] for k, v in read_flax(dcg, _dcg_name, 'params').items()}


def golden_chain(off, dcg, eps, schedule, images):
  """The official truncated test chain (p_sample_loop, n = TEST_STEPS), noise injected."""
  import jax  # pylint: disable=import-outside-toplevel
  diffusion_utils = off[0]
  load_flax(dcg, _dcg_name, gs.dcg_variables())
  load_flax(eps, _eps_name, gs.eps_variables())
  x = _nchw(images)
  key, shape = jax.random.key(gs.CHAIN_KEY), (len(images), gs.NUM_CLASSES)
  # The port's convention: y_T from fold_in(key, T), step t from fold_in(key, t).
  order = [gs.TIMESTEPS] + list(range(gs.TEST_STEPS - 1, 0, -1))
  draws = [np.asarray(jax.random.normal(jax.random.fold_in(key, i), shape)) for i in order]
  queue = [torch.from_numpy(d.copy()) for d in draws]
  randn_like = torch.randn_like
  torch.randn_like = lambda like: queue.pop(0)
  try:
    dcg.eval()
    eps.eval()
    with torch.no_grad():
      y_hat = dcg(x)[0].softmax(dim=1)
      y0 = diffusion_utils.p_sample_loop(eps, x, y_hat, y_hat, gs.TEST_STEPS, schedule.alphas,
                                         schedule.one_minus_alphas_bar_sqrt, only_last_sample=True)
  finally:
    torch.randn_like = randn_like
  assert not queue, f'{len(queue)} noise draws unused'
  return _numpy({'y_hat': y_hat, 'y0': y0, 'probs': y0.softmax(dim=-1)})


def _official_functions(official, path, names, cls=None):
  """Named functions (or methods of class `cls`) of an official file, run from its own source
  without importing the file (its imports pull in plotting and dataset code not needed here)."""
  import ast  # pylint: disable=import-outside-toplevel
  import math  # pylint: disable=import-outside-toplevel
  tree = ast.parse((pathlib.Path(official) / path).read_text())
  body = tree.body if cls is None else next(
      n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls).body
  picked = [n for n in body if isinstance(n, ast.FunctionDef) and n.name in names]
  assert len(picked) == len(names), (path, names)
  namespace = {'math': math, 'optim': torch.optim, 'torch': torch, 'nn': nn}
  code = compile(ast.Module(picked, type_ignores=[]), path, 'exec')
  exec(code, namespace)  # pylint: disable=exec-used
  return [namespace[n] for n in names]


def _namespace(d):
  return types.SimpleNamespace(**{k: _namespace(v) if isinstance(v, dict) else v
                                  for k, v in d.items()})


def _train_images(data_dir: pathlib.Path, n: int):
  """The first n train-split APTOS images, resized to IMAGE_SIZE (PIL bilinear), and labels."""
  import csv  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with open(data_dir / 'labels.csv', newline='') as f:
    rows = [r for r in csv.DictReader(f) if r['diffmic_split'] == 'train'][:n]
  size = (gs.IMAGE_SIZE, gs.IMAGE_SIZE)
  images = np.stack([np.asarray(Image.open(data_dir / r['file']).convert('RGB').resize(
      size, Image.BILINEAR)) for r in rows])
  return images, np.array([int(r['label']) for r in rows], np.int32), [r['image_id'] for r in rows]


def _global_norm(leaves):
  return np.sqrt(sum(np.sum(np.square(v, dtype=np.float64)) for v in leaves.values()))


def trajectory(off, official, dcg, eps, schedule, images, labels, dtype):
  """The official training loop on fixed batches: DCG pre-training, then joint iterations.

  Its pieces run from the official source: `utils.adjust_learning_rate` every iteration at
  i / len(loader) + epoch, `utils.get_optimizer` for both optimizers from configs/aptos.yml,
  `clip_grad_norm_`, and `Diffusion.nonlinear_guidance_model_train_step` for every DCG update; the
  epsilon-network loss is the trainer's loop body (`_eps_iteration`). `dtype` float64 measures
  how far float32 rounding alone moves the same run.
  """
  import yaml  # pylint: disable=import-outside-toplevel
  adjust_lr, get_optimizer = _official_functions(
      official, 'utils.py', ['adjust_learning_rate', 'get_optimizer'])
  (dcg_step,) = _official_functions(official, 'diffusion_trainer.py',
                                    ['nonlinear_guidance_model_train_step'], cls='Diffusion')
  cfg = _namespace(yaml.safe_load((pathlib.Path(official) / 'configs' / 'aptos.yml').read_text()))
  cfg.training.n_epochs, cfg.training.warmup_epochs = gs.TRAJ_EPOCHS, gs.TRAJ_WARMUP
  load_flax(dcg, _dcg_name, gs.dcg_variables())
  load_flax(eps, _eps_name, gs.eps_variables())
  torch.set_default_dtype(dtype)  # The tensors the official DCG makes (its crops) follow.
  dcg.to(dtype)
  eps.to(dtype)
  sched = types.SimpleNamespace(**{k: v.to(dtype) for k, v in vars(schedule).items()})
  trainer = types.SimpleNamespace(aux_cost_function=nn.CrossEntropyLoss(),
                                  compute_guiding_prediction=dcg)
  aux_optimizer = get_optimizer(cfg.aux_optim, dcg.parameters())
  optimizer = get_optimizer(cfg.optim, eps.parameters())
  batches = [(_nchw(b['image']).to(dtype), torch.from_numpy(b['label'].astype(np.int64)))
             for b in gs.trajectory_batches(images, labels)]
  one_hot = lambda y: nn.functional.one_hot(y, gs.NUM_CLASSES).to(dtype)
  params = lambda m, name: read_flax(m, name, 'params')
  out = {k: [] for k in ('pre/dcg_ce', 'pre/dcg_norm')}
  dcg.train()
  for _ in range(gs.TRAJ_PRE_EPOCHS):
    for x, y in batches:
      out['pre/dcg_ce'].append(dcg_step(trainer, x, one_hot(y), aux_optimizer))
      out['pre/dcg_norm'].append(_global_norm(params(dcg, _dcg_name)))
  step = len(out['pre/dcg_ce'])
  for epoch in range(gs.TRAJ_EPOCHS):
    for i, (x, y) in enumerate(batches):
      adjust_lr(optimizer, i / len(batches) + epoch, cfg)
      eps.train()
      dcg.eval()
      with torch.no_grad():
        priors = [p.softmax(dim=1) for p in dcg(x)]
      t, noise = gs.trajectory_draws(step, len(y))
      losses = _eps_iteration(off, eps, sched, x, y, priors, torch.from_numpy(t.astype(np.int64)),
                              torch.from_numpy(noise.copy()).to(dtype), add_ce=False)
      grad_norm = torch.nn.utils.clip_grad_norm_(eps.parameters(), cfg.optim.grad_clip)
      optimizer.step()
      dcg.train()
      record = {'lr': optimizer.param_groups[0]['lr'], 'grad_norm': grad_norm,
                'dcg_ce': dcg_step(trainer, x, one_hot(y), aux_optimizer),
                'eps_norm': _global_norm(params(eps, _eps_name)),
                'dcg_norm': _global_norm(params(dcg, _dcg_name)),
                **{k: v for k, v in losses.items() if k != 'y0_ce'}}
      leaves = params(eps, _eps_name)
      record.update({f'leaf_norm/{k}': np.linalg.norm(leaves[k]) for k in gs.TRAJ_LEAVES})
      for k, v in record.items():
        out.setdefault(f'joint/{k}', []).append(float(torch.as_tensor(v).detach()))
      step += 1
  torch.set_default_dtype(torch.float32)
  dcg.float()
  eps.float()
  return {k: np.asarray(v, np.float64) for k, v in out.items()}


def golden_trajectory(off, official, dcg, eps, schedule, data_dir):
  images, labels, ids = _train_images(data_dir, gs.TRAJ_IMAGES)
  single = trajectory(off, official, dcg, eps, schedule, images, labels, torch.float32)
  double = trajectory(off, official, dcg, eps, schedule, images, labels, torch.float64)
  out = {'images': images, 'labels': labels, 'image_ids': np.array(ids)}
  out.update({k: v.astype(np.float32) for k, v in single.items()})
  out.update({f'drift/{k}': np.abs(v - double[k]).astype(np.float32) for k, v in single.items()})
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--official', required=True, help='checkout of scott-yjyang/DiffMIC')
  p.add_argument('--torchvision', default=None, help='torchvision package folder (see above)')
  p.add_argument('--data', required=True, help='the aptos2019_224 folder (labels.csv, images/)')
  p.add_argument('--only', default=None, help='write only this file (dcg, eps, joint, chain, '
                 'trajectory)')
  args = p.parse_args()
  torch.manual_seed(0)
  off = _import_official(args.official, args.torchvision)
  dcg, eps, schedule = official_modules(off, gs.config())
  images, labels, ids = _inputs(pathlib.Path(args.data))
  gs.GOLDEN.mkdir(exist_ok=True)
  make = {
      'dcg': lambda: {'images': images, 'labels': labels, 'image_ids': np.array(ids),
                      **golden_dcg(dcg, images)},
      'eps': lambda: golden_eps(eps, images),
      'joint': lambda: golden_joint(off, args.official, dcg, eps, schedule, images, labels),
      'chain': lambda: golden_chain(off, dcg, eps, schedule, images),
      'trajectory': lambda: golden_trajectory(off, args.official, dcg, eps, schedule,
                                              pathlib.Path(args.data))}
  results = {name: fn() for name, fn in make.items() if args.only in (None, name)}
  for name, arrays in results.items():
    np.savez_compressed(gs.GOLDEN / f'{name}.npz', **arrays)
    print(name, (gs.GOLDEN / f'{name}.npz').stat().st_size, 'bytes', len(arrays), 'arrays')


if __name__ == '__main__':
  main()
