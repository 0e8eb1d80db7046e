"""glibc malloc settings for CPU training: keep freed buffers for reuse instead of unmapping them.

XLA:CPU mallocs each step's large temporaries afresh; with glibc's defaults they are mmapped and
unmapped every step, so the kernel zero-fills and faults their pages in again each time. With the
settings in `ENV` freed memory stays in the heap and steady-state steps fault nothing.

Opt-in (config.cpu_tuning): glibc reads the settings at the first allocation, so
`keep_freed_memory` re-executes the process once with them in its environment. Nothing here runs
at import. `release_freed_memory` hands freed pages back where a run changes phase.
"""

import ctypes
import functools
import importlib.metadata
import importlib.util
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
  Otherwise it does not return: the process starts again with the same arguments (`sys.orig_argv`),
  and the call returns True there.
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


def cpu_only_host() -> bool:
  """Whether JAX can only run on the CPU here: no accelerator plugin and no TPU runtime installed.

  Read from installed packages and JAX_PLATFORMS, without starting JAX (the malloc settings must
  be in place before anything allocates).
  """
  platforms = os.environ.get('JAX_PLATFORMS', '')
  if platforms:
    return platforms.split(',')[0].strip().lower() == 'cpu'
  plugins = importlib.metadata.entry_points(group='jax_plugins')
  # Plugins register as entry points or as modules of the jax_plugins namespace package.
  return not plugins and all(importlib.util.find_spec(m) is None for m in ('jax_plugins', 'libtpu'))


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
