"""Data parallelism by sharding under `jax.jit`: one ('data',) mesh over every device.

The batch is split along its first axis over all devices of all processes and the train state is
replicated; the steps are written for the global batch and XLA inserts the collectives. This is the
documented successor of `pmap`. Each process feeds only its own rows; `global_batch` stitches them
into global arrays.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffmic_jax.errors import UserError


def make_mesh(devices=None) -> Mesh:
  """A one-axis ('data',) mesh over `devices` (default: every device of every process)."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


class BatchSizeError(UserError, ValueError):
  """A global batch that does not split evenly over the devices."""


def check_batch_size(global_batch_size: int, mesh: Mesh, field: str = 'train.batch_size') -> int:
  """The per-process batch, after checking the global batch splits evenly over devices."""
  n = mesh.devices.size
  if global_batch_size % n:
    raise BatchSizeError(f'config.{field}={global_batch_size} must be a multiple of the device '
                         f'count {n} (e.g. {max(n, global_batch_size // n * n)})')
  return global_batch_size // jax.process_count()


def check_batch_sizes(config, mode: str) -> None:
  """At start-up, the batches `mode` uses against the device count: a validation batch that does
  not split would otherwise fail inside JAX at the first validation, on every resume."""
  mesh = make_mesh()
  if mode == 'train':
    check_batch_size(config.train.batch_size, mesh, 'train.batch_size')
  if mode in ('train', 'evaluate', 'predict'):
    check_batch_size(config.eval.batch_size, mesh, 'eval.batch_size')


def global_batch(local: dict, mesh: Mesh, replicate: bool = False) -> dict:
  """Host-local numpy rows of this process -> global arrays sharded over 'data' (or, with one
  process, replicated: a partial batch whose size need not divide over the devices)."""
  sharding = replicated(mesh) if replicate else batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}
