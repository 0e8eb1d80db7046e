"""host_memory: nothing happens at import; `keep_freed_memory` re-executes the process once with
glibc's settings; `release_freed_memory` hands a freed block's pages back.

Each probe is a fresh process. How much the settings save is measured by bench/cpu_tuning.py.
"""

import os
import subprocess
import sys

import pytest

from conftest import REPO

_IMPORT_ALL = """
import importlib, os, pkgutil
print('started', flush=True)
import configs, diffmic_jax
names = [m.name for m in pkgutil.walk_packages(diffmic_jax.__path__, 'diffmic_jax.')]
names += [m.name for m in pkgutil.iter_modules(configs.__path__, 'configs.')]
for name in names:
  importlib.import_module(name)
print(len(names), any(k.startswith('MALLOC_') for k in os.environ))
"""

_KEEP = """
print('started', flush=True)
from diffmic_jax import host_memory
print(host_memory.keep_freed_memory(), host_memory.in_force())
"""

_RELEASE = """
import numpy as np
from diffmic_jax import host_memory
host_memory.keep_freed_memory()  # glibc's settings, as in a CPU-tuned run

def rss():
  return int(open('/proc/self/statm').read().split()[1]) * 4096

big = np.ones(2**27, np.float32)  # 512 MiB, touched
keep = np.ones(2**20, np.float32)  # allocated above it, so freeing `big` leaves a hole in the heap
del big
before = rss()
host_memory.release_freed_memory()
print(host_memory.in_force(), before - rss())
"""


def _run(probe: str) -> list[str]:
  """The lines a probe prints, run in a fresh process without glibc's settings."""
  from diffmic_jax import host_memory
  env = {k: v for k, v in os.environ.items()
         if k not in host_memory.ENV and k != 'DIFFMIC_KEEP_FREED_MEMORY'}
  env.update(JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO))
  done = subprocess.run([sys.executable, '-c', probe], env=env, capture_output=True, text=True,
                        check=True, cwd=REPO)
  return done.stdout.split('\n')[:-1]


def _needs_glibc():
  from diffmic_jax import host_memory
  if not host_memory._glibc():
    pytest.skip('not glibc: keep_freed_memory is a no-op here')


def test_importing_every_module_changes_nothing():
  lines = _run(_IMPORT_ALL)
  assert lines[0] == 'started' and lines.count('started') == 1, lines  # not re-executed
  count, malloc_set = lines[-1].split()
  assert int(count) > 20 and malloc_set == 'False', lines


def test_keep_freed_memory_re_executes_once_with_the_settings():
  _needs_glibc()
  lines = _run(_KEEP)
  assert lines == ['started', 'started', 'True True'], lines


def test_release_freed_memory_hands_back_the_pages_of_a_freed_block():
  _needs_glibc()
  if not os.path.exists('/proc/self/statm'):
    pytest.skip('needs /proc')
  in_force, released = _run(_RELEASE)[-1].split()
  assert in_force == 'True'
  # Kept by glibc until the call, then handed back: nearly all of the 512 MiB.
  assert int(released) >= 0.9 * 2**29, f'released {int(released) / 2**20:.0f} MiB of 512'


def test_cpu_only_host_follows_jax_platforms(monkeypatch):
  from diffmic_jax import host_memory
  monkeypatch.setenv('JAX_PLATFORMS', 'cuda,cpu')
  assert not host_memory.cpu_only_host()  # No malloc settings where an accelerator runs.
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  assert host_memory.cpu_only_host()
