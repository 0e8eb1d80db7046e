"""Multi-process start-up: one JAX process per host (Cloud TPU worker, GPU node, or CPU process).

`jax.distributed.initialize()` needs no arguments on Cloud TPU; elsewhere the coordinator
address, process count and id come from flags or the environment (JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID; SLURM and Open MPI are detected by JAX itself). It must run
before anything touches a device, so main.py calls it first.

On the CPU backend the processes' devices talk through a CPU collectives implementation; without
one, no computation can span processes. JAX 0.10 defaults to gloo over TCP, which is what the
two-process test (tests/test_multiprocess.py) runs on 127.0.0.1; it is set here explicitly in case
a site config turned it off. It affects only the CPU client, so TPU and GPU runs are untouched.
"""

import os

import jax
from absl import logging
from jax.experimental import multihost_utils

ENV_SWITCH = 'DIFFMIC_DISTRIBUTED'


def initialize(mode: str = 'auto', coordinator_address: str = '', num_processes: int = 0,
               process_id: int = -1) -> None:
  """Starts the JAX distributed runtime when asked to.

  Args:
    mode: 'off' (single process), 'on' (always initialise) or 'auto' (initialise when
      $DIFFMIC_DISTRIBUTED=1 or a coordinator address is given by flag or environment).
    coordinator_address: host:port of process 0; '' leaves it to JAX (Cloud TPU, SLURM, env).
    num_processes: total processes; 0: $JAX_NUM_PROCESSES, else left to JAX (TPU, SLURM).
    process_id: this process; -1: $JAX_PROCESS_ID, else left to JAX.
  """
  if mode not in ('auto', 'on', 'off'):
    raise ValueError(f"--distributed must be 'auto', 'on' or 'off', got {mode!r}")
  wanted = mode == 'on' or (mode == 'auto' and (
      os.environ.get(ENV_SWITCH) == '1' or coordinator_address
      or os.environ.get('JAX_COORDINATOR_ADDRESS')))
  if not wanted:
    return
  # JAX itself reads only JAX_COORDINATOR_ADDRESS from the environment; the count and the id
  # are read here so that a plain environment-driven launch (launch/multinode_gpu.sh) works.
  coordinator_address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS', '')
  num_processes = num_processes or int(os.environ.get('JAX_NUM_PROCESSES', 0))
  process_id = process_id if process_id >= 0 else int(os.environ.get('JAX_PROCESS_ID', -1))
  kwargs = {}
  if coordinator_address:
    kwargs['coordinator_address'] = coordinator_address
  if num_processes:
    kwargs['num_processes'] = num_processes
  if process_id >= 0:
    kwargs['process_id'] = process_id
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**kwargs)
  logging.info('JAX distributed: process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def sync(name: str) -> None:
  """A barrier across processes (a no-op for one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
