"""host_memory: once `diffmic_jax.main` is imported, a warm jitted call stops page-faulting, and
`release_freed_memory` hands a freed block's pages back.

Each probe is a fresh process (importing main re-executes it with glibc's settings). The probe's
output is 103 MB, the size of a ResNet50 stage-1 activation at batch 32.
"""

import os
import subprocess
import sys

import pytest

_PROBE = """
import resource
import diffmic_jax.main  # What `python -m diffmic_jax.main` runs first.
from diffmic_jax import host_memory
import jax, jax.numpy as jnp
f = jax.jit(lambda a, b: (a @ b) @ b.T)  # a @ b: a 103 MB temporary, as in a train step
a, b = jnp.ones((100_352, 64)), jnp.ones((64, 256))
for _ in range(10):
  f(a, b).block_until_ready()
faults = []
for _ in range(10):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(a, b).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(host_memory.in_force(), sorted(faults)[len(faults) // 2])
"""

_PAGES = 100_352 * 256 * 4 // 4096  # One call's temporary, in 4 KiB pages.


def _run(probe: str, keep: str) -> tuple[bool, int]:
  """(whether the setting was in force, the number) a probe prints last, run in a fresh process."""
  from diffmic_jax import host_memory
  env = {k: v for k, v in os.environ.items() if k not in host_memory.ENV}
  env.update(DIFFMIC_KEEP_FREED_MEMORY=keep, JAX_PLATFORMS='cpu')
  done = subprocess.run([sys.executable, '-c', probe], env=env, capture_output=True, text=True,
                        check=True)
  in_force, number = done.stdout.split()[-2:]
  return in_force == 'True', int(number)


def _probe(keep: str) -> tuple[bool, int]:
  """(whether the setting is in force, median page faults of ten warm calls)."""
  return _run(_PROBE, keep)


def test_importing_main_stops_a_warm_step_faulting_its_outputs_back_in():
  from diffmic_jax import host_memory
  if not host_memory._glibc():
    pytest.skip('not glibc: keep_freed_memory is a no-op here')
  in_force, kept = _probe('1')
  off, default = _probe('0')
  assert in_force
  assert not off
  # glibc's defaults: every call faults its temporary in afresh (25,089 faults per call measured).
  # Kept: none in a typical call. Now and then the heap still grows, when a small block has split
  # the freed space and a call's buffers go above it: one call in ten runs, or three calls of ten
  # while another process loaded the machine. The median call is the steady state either way.
  assert default >= 0.9 * _PAGES, f'glibc defaults: {default} faults in the median call'
  assert kept <= 0.1 * _PAGES, f'with keep_freed_memory: {kept} faults in the median call'


_RELEASE_PROBE = """
import numpy as np
import diffmic_jax.main  # glibc's settings, as in a run
from diffmic_jax import host_memory

def rss():
  return int(open('/proc/self/statm').read().split()[1]) * 4096

big = np.ones(2**27, np.float32)  # 512 MiB, touched
keep = np.ones(2**20, np.float32)  # allocated above it, so freeing `big` leaves a hole in the heap
del big
before = rss()
host_memory.release_freed_memory()
print(host_memory.in_force(), before - rss())
"""


def test_release_freed_memory_hands_back_the_pages_of_a_freed_block():
  from diffmic_jax import host_memory
  if not host_memory._glibc() or not os.path.exists('/proc/self/statm'):
    pytest.skip('needs glibc and /proc')
  in_force, released = _run(_RELEASE_PROBE, '1')
  assert in_force
  # Kept by glibc until the call (test above), then handed back: nearly all of the 512 MiB.
  assert released >= 0.9 * 2**29, f'released {released / 2**20:.0f} MiB of 512'
