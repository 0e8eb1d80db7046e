"""Starts a model's ResNet trunks from converted ImageNet weights and says what it did.

The DCG's `global_net` / `local_net` (config.model.pretrained) and the epsilon network's `encoder`
(config.model.eps_pretrained) are ResNet trunks inside larger models. `init_from_pretrained` swaps
one such subtree of the freshly initialised variables for the file's tensors, refusing a file that
does not fit exactly (a silent partial load would train from a half-random trunk), and returns a
report for the training log of which tensors came from the file and which are new.

Everything here is dict manipulation over `flax.traverse_util.flatten_dict`, so it works on the
plain nested dicts that `model.init` returns.
"""

import dataclasses
import pathlib
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from diffmic_jax import convert

_COLLECTIONS = ('params', 'batch_stats')


def load_variables(path: str) -> dict[str, Any]:
  """Reads pretrained ResNet variables.

  Args:
    path: a `.msgpack` written by `diffmic_jax.convert`, or a torchvision/timm `.pth` /
      `.safetensors` converted on the fly (the ImageNet `fc` head is kept).

  Returns:
    {'params': ..., 'batch_stats': ...} nested dicts of numpy arrays.
  """
  if not pathlib.Path(path).is_file():
    raise FileNotFoundError(f'pretrained weights {path!r} not found; see the README section on '
                            'ImageNet weights for how to make one')
  if pathlib.Path(path).suffix.lower() in ('.safetensors', *convert.TORCH_SUFFIXES):
    return convert.convert_file(path)
  variables = serialization.msgpack_restore(pathlib.Path(path).read_bytes())
  if not isinstance(variables, dict) or 'params' not in variables:
    raise ValueError(f"{path} is not a diffmic-jax weights file (no 'params' collection)")
  return {c: variables.get(c, {}) for c in _COLLECTIONS}


@dataclasses.dataclass(frozen=True)
class PretrainedReport:
  """Where each tensor of a model's variables came from.

  Attributes:
    loaded: 'collection/module/.../leaf' -> the file it was read from.
    new: paths that kept their fresh initialisation.
  """
  loaded: Mapping[str, str]
  new: tuple[str, ...]

  def merge(self, other: 'PretrainedReport') -> 'PretrainedReport':
    """Combines reports of successive loads into the same variables (e.g. global_net, then
    local_net): a tensor is new only if neither load filled it."""
    loaded = {**self.loaded, **other.loaded}
    return PretrainedReport(loaded, tuple(p for p in self.new if p in other.new
                                          and p not in loaded))

  def summary(self) -> str:
    """A few log lines: tensors and values per source and prefix, new tensors per module."""
    lines = []
    by_source: dict[tuple[str, str], int] = {}
    for path, source in self.loaded.items():
      key = (source, _module_of(path))
      by_source[key] = by_source.get(key, 0) + 1
    for (source, module), n in sorted(by_source.items()):
      lines.append(f'pretrained: {n} tensor(s) of {module} from {source}')
    new_by_module: dict[str, int] = {}
    for path in self.new:
      new_by_module[_module_of(path)] = new_by_module.get(_module_of(path), 0) + 1
    for module, n in sorted(new_by_module.items()):
      lines.append(f'newly initialised: {n} tensor(s) of {module}')
    return '\n'.join(lines)


def init_from_pretrained(variables: Mapping[str, Any], path: str | Mapping[str, Any],
                         prefix: Sequence[str] = (),
                         source_name: str | None = None) -> tuple[dict, PretrainedReport]:
  """Replaces the ResNet subtree at `prefix` with pretrained tensors.

  The file's `fc` head is ignored: DiffMIC's trunks have none, and a model's own `fc` (if the
  subtree has one) has the task's width, so it stays newly initialised.

  Args:
    variables: the model's variables from `model.init` ({'params', 'batch_stats', ...}).
    path: a weights file for `load_variables`, or its already loaded result (to read a file once
      for several trunks).
    prefix: module path of the trunk, e.g. ('global_net',) in the DCG or ('encoder',) in the
      epsilon network; () when `variables` belong to a bare ResNet.
    source_name: how the report and errors name the source; defaults to `path` when it is one.

  Returns:
    (new variables as nested dicts, with the subtree's arrays in the target's dtype;
     a PretrainedReport).

  Raises:
    ValueError: the subtree is absent, or the file has missing, unexpected or mis-shaped tensors;
      the message lists each with its expected and actual shapes.
  """
  source_name = source_name or (path if isinstance(path, str) else '<loaded variables>')
  source = load_variables(path) if isinstance(path, str) else path
  prefix = tuple(prefix)
  where = '/'.join(prefix) or 'the model'
  target_flat = traverse_util.flatten_dict(_plain(variables))
  if not any(k[0] in _COLLECTIONS and k[1:len(prefix) + 1] == prefix for k in target_flat):
    raise ValueError(f'no ResNet at {where!r} in the model variables; top-level modules are '
                     f"{sorted(_plain(variables).get('params', {}))}")

  # Both sides keyed by (collection, path inside the trunk), the heads set aside.
  expected = {(k[0], *k[len(prefix) + 1:]): v for k, v in target_flat.items()
              if k[0] in _COLLECTIONS and k[1:len(prefix) + 1] == prefix}
  expected = {k: v for k, v in expected.items() if k[1] != 'fc'}
  got = {k: v for k, v in traverse_util.flatten_dict(_plain(source)).items()
         if k[0] in _COLLECTIONS and k[1] != 'fc'}
  problem = convert.mismatch_report({k: tuple(np.shape(v)) for k, v in expected.items()},
                                    {k: tuple(np.shape(v)) for k, v in got.items()},
                                    f'{where} (from {source_name})')
  if problem:
    raise ValueError(problem)

  loaded = {}
  for (collection, *rest), value in got.items():
    key = (collection, *prefix, *rest)
    target = target_flat[key]
    target_flat[key] = jnp.asarray(value, dtype=jnp.asarray(target).dtype)
    loaded['/'.join(key)] = source_name
  new = tuple('/'.join(k) for k in target_flat if '/'.join(k) not in loaded)
  return traverse_util.unflatten_dict(target_flat), PretrainedReport(loaded, new)


def _plain(tree: Mapping[str, Any]) -> dict:
  """FrozenDict / Mapping -> dict, so flatten_dict sees every level."""
  if isinstance(tree, Mapping):
    return {k: _plain(v) for k, v in tree.items()}
  return tree


def _module_of(path: str) -> str:
  """'params/global_net/layer1_0/bn1/scale' -> 'params/global_net' (collection and top module)."""
  return '/'.join(path.split('/')[:2])
