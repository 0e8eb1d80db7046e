"""`python -m diffmic_jax.main` as subprocesses on CPU, for the tests that run whole jobs.

Each job leads its own process group, so one stuck in a collective (which ignores SIGTERM) can
be SIGKILLed with everything it started. One compilation cache per test lets later jobs reuse the
first one's programs.
"""

import os
import pathlib
import signal
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]


def cpu_env(devices: int, cache: pathlib.Path) -> dict:
  return {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3',
          'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
          'JAX_COMPILATION_CACHE_DIR': str(cache),
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
          'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}


def start(cmd: list[str], env: dict, log: pathlib.Path) -> subprocess.Popen:
  """Starts `cmd` in the repository, stdout and stderr to `log`, leading a new process group."""
  with open(log, 'w') as f:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                            start_new_session=True)


def kill_survivors(procs: list[subprocess.Popen]) -> None:
  for p in procs:
    if p.poll() is None:
      os.killpg(p.pid, signal.SIGKILL)
      p.wait()
