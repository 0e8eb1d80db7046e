"""Turns a torchvision / timm ResNet-18/50 checkpoint into this project's Linen variables.

DiffMIC starts its DCG backbones from ImageNet weights, and users have those as PyTorch files:
torchvision's `resnet50-0676ba61.pth` or timm's `model.safetensors` (timm's plain `resnet18` /
`resnet50` use torchvision's tensor names). `diffmic_jax.models.resnet` names its submodules after
torchvision, so the conversion is a rename plus a transpose:

  conv1.weight (O, I, H, W)             -> params/conv1/kernel (H, W, I, O)
  layer1.0.bn1.{weight, bias}           -> params/layer1_0/bn1/{scale, bias}
  layer1.0.bn1.running_{mean, var}      -> batch_stats/layer1_0/bn1/{mean, var}
  layer2.0.downsample.{0, 1}.*          -> .../layer2_0/downsample_{conv, bn}/...
  fc.weight (out, in)                   -> params/fc/kernel (in, out)
  *.num_batches_tracked                 -> dropped

`.safetensors` is read with numpy only; `.pth` needs torch. The result is written as msgpack with
`flax.serialization` so that this module (and its CLI) stays free of Orbax.

  python -m diffmic_jax.convert --input resnet50-0676ba61.pth --arch resnet50 \
      --output resnet50_imagenet.msgpack
"""

import argparse
import pathlib
import re
import sys
from typing import Any, Mapping, Sequence

import numpy as np
from flax import serialization, traverse_util

ARCHS = ('resnet18', 'resnet50')
TORCH_SUFFIXES = ('.pth', '.pt', '.bin', '.ckpt')
_BN_LEAVES = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
              'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}
_BN_LEAVES_INV = {v: k for k, v in _BN_LEAVES.items()}
_KEY_RE = re.compile(r'^(?:layer(\d)\.(\d+)\.)?'
                     r'(conv\d|bn\d|downsample\.[01]|fc)\.'
                     r'(weight|bias|running_mean|running_var|num_batches_tracked)$')
_MAX_LISTED = 25  # Per kind of problem; a wrong architecture would otherwise print hundreds.


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a PyTorch-style state dict as float32 numpy arrays.

  Unwraps a {'state_dict': ...} or {'model': ...} training checkpoint and strips the 'module.'
  prefix that DataParallel / DDP adds.

  Args:
    path: a `.safetensors` file (read without torch) or a torch pickle (`.pth`, `.pt`, ...).

  Returns:
    tensor name -> numpy array.
  """
  suffix = pathlib.Path(path).suffix.lower()
  if suffix == '.safetensors':
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    state = load_file(path)
  else:
    state = _read_torch_pickle(path)
  for wrapper in ('state_dict', 'model'):
    if isinstance(state.get(wrapper), Mapping):
      state = state[wrapper]
  out = {}
  for name, value in state.items():
    name = name[len('module.'):] if name.startswith('module.') else name
    array = np.asarray(value)
    out[name] = array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array
  return out


def _read_torch_pickle(path: str) -> dict[str, Any]:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        f'{path} is a PyTorch pickle and reading it needs torch: `pip install torch` (the CPU '
        'build is enough), or convert the file to .safetensors elsewhere.') from e
  state = torch.load(path, map_location='cpu', weights_only=True)
  if not isinstance(state, Mapping):
    raise ValueError(f'{path} holds a {type(state).__name__}, not a state dict; save '
                     '`model.state_dict()` rather than the model object')

  def to_numpy(v):
    if isinstance(v, torch.Tensor):
      return (v.float() if v.is_floating_point() else v).numpy()
    if isinstance(v, Mapping):
      return {k: to_numpy(x) for k, x in v.items()}
    return v

  return {k: to_numpy(v) for k, v in state.items()}


def torch_to_flax(name: str) -> tuple[str, ...] | None:
  """Maps a torchvision tensor name to ('params' | 'batch_stats', module..., leaf).

  Returns None for `num_batches_tracked`; raises ValueError for names outside the ResNet layout.
  """
  m = _KEY_RE.match(name)
  if m is None:
    raise ValueError(f'{name!r} is not a torchvision/timm ResNet-18/50 tensor name')
  stage, block, module, leaf = m.groups()
  if leaf == 'num_batches_tracked':
    return None
  if module == 'fc':
    if leaf not in ('weight', 'bias'):
      raise ValueError(f'{name!r}: fc has only weight and bias')
    return ('params', 'fc', 'kernel' if leaf == 'weight' else 'bias')
  module = {'downsample.0': 'downsample_conv', 'downsample.1': 'downsample_bn'}.get(module, module)
  prefix = (f'layer{stage}_{block}',) if stage else ()
  if 'conv' in module:
    if leaf != 'weight':
      raise ValueError(f'{name!r}: ResNet convs have no {leaf}')
    return ('params', *prefix, module, 'kernel')
  collection, flax_leaf = _BN_LEAVES[leaf]
  return (collection, *prefix, module, flax_leaf)


def flax_to_torch(path: Sequence[str]) -> str:
  """Inverse of `torch_to_flax`, for error messages: ('params', 'layer1_0', 'bn1', 'scale') ->
  'layer1.0.bn1.weight'."""
  collection, *modules, leaf = path
  names = []
  for module in modules:
    m = re.fullmatch(r'layer(\d)_(\d+)', module)
    names.append(f'layer{m[1]}.{m[2]}' if m else
                 {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}.get(module,
                                                                                         module))
  if leaf == 'kernel':
    torch_leaf = 'weight'
  else:
    torch_leaf = _BN_LEAVES_INV.get((collection, leaf), leaf)
  return '.'.join(names + [torch_leaf])


def convert_state_dict(state: Mapping[str, np.ndarray], include_fc: bool = True) -> dict:
  """Renames and transposes a torchvision-named ResNet state dict.

  Args:
    state: tensor name -> array, as from `read_state_dict`.
    include_fc: keep the ImageNet head (`fc`); DiffMIC's trunks drop it.

  Returns:
    {'params': ..., 'batch_stats': ...} nested dicts of float32 numpy arrays.
  """
  flat, bad = {}, []
  for name, value in state.items():
    try:
      path = torch_to_flax(name)
    except ValueError:
      bad.append(name)
      continue
    if path is None or (path[1] == 'fc' and not include_fc):
      continue
    value = np.asarray(value, np.float32)
    if path[-1] == 'kernel':
      value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    flat[path] = np.ascontiguousarray(value)
  if bad:
    raise ValueError(f'{len(bad)} tensors are not part of a torchvision/timm ResNet-18/50 '
                     f'(deep-stem or other variants are not supported): {_listed(bad)}')
  return {'params': {}, 'batch_stats': {}, **traverse_util.unflatten_dict(flat)}


def expected_shapes(arch: str, include_fc: bool = True, num_classes: int = 1000) -> dict:
  """Flattened {path: shape} of the Flax ResNet, without allocating it."""
  import jax  # pylint: disable=import-outside-toplevel
  from diffmic_jax.models import resnet  # pylint: disable=import-outside-toplevel
  if arch not in ARCHS:
    raise ValueError(f'unknown arch {arch!r}; choose one of {ARCHS}')
  model = resnet.backbone(arch, output='logits' if include_fc else 'pooled',
                          num_classes=num_classes)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 64, 64, 3))))
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(dict(abstract)).items()}


def mismatch_report(expected: Mapping[tuple, tuple], got: Mapping[tuple, tuple],
                    where: str) -> str | None:
  """Lists missing, unexpected and mis-shaped tensors, or returns None when the two fit.

  Args:
    expected: flattened path -> shape the model needs.
    got: flattened path -> shape the file provides.
    where: what is being filled, for the message's first line.

  Returns:
    A multi-line message naming each tensor (Flax path and torchvision name), or None.
  """
  def name(p):
    return f"{'/'.join(p)} ({flax_to_torch(p)})"

  missing = [f'{name(p)} expected {expected[p]}' for p in expected if p not in got]
  unexpected = [f'{name(p)} got {got[p]}' for p in got if p not in expected]
  misshaped = [f'{name(p)} expected {expected[p]} got {got[p]}'
               for p in expected if p in got and tuple(expected[p]) != tuple(got[p])]
  if not (missing or unexpected or misshaped):
    return None
  lines = [f'pretrained weights do not fit {where}:']
  for title, items in (('missing', missing), ('unexpected', unexpected),
                       ('mis-shaped', misshaped)):
    if items:
      lines.append(f'  {len(items)} {title}:')
      lines += [f'    {item}' for item in items[:_MAX_LISTED]]
      if len(items) > _MAX_LISTED:
        lines.append(f'    ... and {len(items) - _MAX_LISTED} more')
  return '\n'.join(lines)


def convert_file(path: str, arch: str | None = None, include_fc: bool = True) -> dict:
  """Reads, converts and (when `arch` is given) checks a checkpoint against the Flax ResNet.

  Args:
    path: `.safetensors` or torch pickle.
    arch: 'resnet18' or 'resnet50'; None skips the shape check.
    include_fc: keep the `fc` head.

  Returns:
    {'params': ..., 'batch_stats': ...} of numpy arrays.
  """
  variables = convert_state_dict(read_state_dict(path), include_fc)
  if arch is not None:
    fc = variables['params'].get('fc')
    num_classes = fc['bias'].shape[0] if fc and 'bias' in fc else 1000
    got = {k: v.shape for k, v in traverse_util.flatten_dict(variables).items()}
    problem = mismatch_report(expected_shapes(arch, include_fc and fc is not None, num_classes),
                              got, f'a Flax {arch} ({path})')
    if problem:
      raise ValueError(problem)
  return variables


def save_msgpack(variables: Mapping[str, Any], path: str) -> None:
  """Writes {'params', 'batch_stats'} with flax.serialization; `pretrained.load_variables` reads
  it back."""
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(path).write_bytes(serialization.msgpack_serialize(
      {k: dict(v) for k, v in variables.items()}))


def cli(argv: Sequence[str] | None = None) -> int:
  """Entry point of `diffmic-convert-weights` / `python -m diffmic_jax.convert`."""
  parser = argparse.ArgumentParser(
      prog='diffmic-convert-weights',
      description='Convert a torchvision/timm ResNet-18/50 checkpoint to diffmic-jax msgpack.')
  parser.add_argument('--input', required=True, help='.pth (needs torch) or .safetensors')
  parser.add_argument('--arch', choices=ARCHS, required=True)
  parser.add_argument('--output', help='default: the input name with .msgpack')
  parser.add_argument('--no-fc', action='store_true', help='drop the ImageNet classifier head')
  args = parser.parse_args(argv)
  output = args.output or str(pathlib.Path(args.input).with_suffix('.msgpack'))
  try:
    variables = convert_file(args.input, args.arch, include_fc=not args.no_fc)
  except (ValueError, ImportError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  save_msgpack(variables, output)
  flat = traverse_util.flatten_dict(variables)
  n_params = sum(v.size for k, v in flat.items() if k[0] == 'params')
  print(f'{args.input} -> {output}: {args.arch}, {len(flat)} tensors, {n_params:,} parameters'
        f"{'' if args.no_fc or 'fc' not in variables['params'] else ' (with fc)'}")
  return 0


def _listed(names: Sequence[str]) -> str:
  shown = ', '.join(names[:_MAX_LISTED])
  return shown + (f', ... and {len(names) - _MAX_LISTED} more' if len(names) > _MAX_LISTED else '')


if __name__ == '__main__':
  sys.exit(cli())
