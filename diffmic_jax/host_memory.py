"""Host memory: stop glibc handing freed buffers back to the kernel between train steps.

XLA:CPU allocates every step's temporaries (2.7 GB for the ResNet50 joint step) and each fresh
output with malloc, on its worker threads. glibc serves requests that large with a fresh mmap from a
per-thread arena and unmaps them on free, so every step the kernel zero-fills and faults in every
page again: about 990,000 page faults (4 GB) and 4.3 s of kernel CPU per 16.4 s ResNet50 joint
step (`bench/train_speed.py`; README, Benchmarks > Speed).

`keep_freed_memory` makes glibc keep what it frees for reuse instead: one arena (worker threads'
arenas mmap large blocks whatever the settings), no mmap for large blocks, and no trimming of the
heap top. Steady-state steps then fault nothing.

glibc reads the settings at the process's first allocation, so they go in the environment and the
process re-executes itself once (same pid, same arguments, `sys.orig_argv`). Set at run time with
mallopt instead, after the interpreter had started, the ResNet50 bench still faulted nothing once
warm but peaked at 9.5 GB resident instead of 7.0 GB. Even from the start, the high-water mark
depends on the order of allocations (6.9 or 9.7 GB in two orders; README, Benchmarks > Memory).
`main.py` and the benches call it first thing.

DIFFMIC_KEEP_FREED_MEMORY=0 keeps glibc's defaults; so does setting any of the variables yourself.
The cost is that freed memory stays resident until `release_freed_memory` hands its pages back.
`train.py` calls it where a run changes phase (state built, a step or sampler compiled, a
validation done), never between steady-state steps: what one phase freed (the compiler's working
memory, the other stage's buffers) would otherwise stay resident for the rest of the run. In a
bench-like script of the ResNet50 joint step at 224 px, one call after building the state and
compiling gave a peak of 6.4 GB at the usual step time, where that script had peaked at 9.7 GB;
whole runs vary too much from run to run to show its effect (README, Benchmarks > Memory).
"""

import ctypes
import functools
import os
import sys

# glibc's malloc tunables, by their environment names (read once, at the first allocation).
ENV = {'MALLOC_ARENA_MAX': '1', 'MALLOC_MMAP_MAX_': '0', 'MALLOC_TRIM_THRESHOLD_': str(2**62)}


def _glibc() -> bool:
  try:
    return os.confstr('CS_GNU_LIBC_VERSION').startswith('glibc')
  except (AttributeError, ValueError, OSError):  # Not glibc, or not a POSIX confstr.
    return False


def in_force() -> bool:
  """Whether this process started with the settings."""
  return all(os.environ.get(k) == v for k, v in ENV.items())


def keep_freed_memory() -> bool:
  """Re-executes this process once with glibc keeping freed memory; True if the settings hold.

  Returns False, changing nothing, outside glibc, with DIFFMIC_KEEP_FREED_MEMORY=0, when the
  caller set one of the variables itself, or in an embedded interpreter (no sys.executable).
  Otherwise it does not return: the process starts again with the same arguments, and the call
  returns True there.
  """
  if in_force():
    return True
  if (os.environ.get('DIFFMIC_KEEP_FREED_MEMORY', '1') == '0' or not _glibc()
      or any(k in os.environ for k in ENV) or not sys.executable):
    return False
  os.environ.update(ENV)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


@functools.cache
def _malloc_trim():
  return ctypes.CDLL(None).malloc_trim if _glibc() else None


def release_freed_memory() -> None:
  """Hands the pages of every free heap block back to the kernel (glibc's malloc_trim(0)).

  The blocks stay in the heap for reuse; only their pages go, so the next allocation that lands
  there faults them in once. Costs a walk of the heap (milliseconds); a no-op outside glibc.
  """
  if (trim := _malloc_trim()) is not None:
    trim(0)
