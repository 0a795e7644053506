"""Host-side performance settings for training on CPU (docs/performance.md has the measurements behind them).

* :func:`compiler_options`: XLA options for the jitted train step. On CPU, XLA drops every
  ``optimization_barrier`` before fusion (the ``cse_barrier_expander`` pass), and then fuses the residual stream's
  cotangent - a chain of adds running through every block - into each block's weight-gradient matmul operand,
  recomputing it block after block (quadratic in depth: 20-35% of a ViT step). The models put a barrier on that
  cotangent (``mim_jax.models.vit.materialize_cotangent``); keeping barriers alive makes it materialize once.
* :func:`tune_host_allocator`: glibc returns every allocation above 32 MiB to the OS when it is freed, and XLA
  allocates each step's temporaries as one such block, so every step page-faults its whole working set again
  (~30k faults and 20-25% of the step for ViT-Tiny at batch 32). Serving large blocks from one heap that is never
  trimmed removes the faults. Must run before JAX starts its threads; the CLI does it first thing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_CPU_OPTIONS = {'xla_disable_hlo_passes': 'cse_barrier_expander'}

_tuned: bool | None = None


def compiler_options(platform: str) -> dict[str, str] | None:
  """``jax.jit(..., compiler_options=...)`` for a train step on ``platform`` ('cpu', 'gpu', 'tpu').
  ``MIM_JAX_XLA_CPU_BARRIER=0`` turns the CPU option off (to measure what it buys: docs/performance.md)."""
  if platform != 'cpu' or os.environ.get('MIM_JAX_XLA_CPU_BARRIER', '1') == '0':
    return None
  return dict(_CPU_OPTIONS)


def tune_host_allocator() -> bool:
  """Keeps large host allocations in one untrimmed glibc heap (no per-step page faults). Idempotent.

  Returns True when the settings were applied. Does nothing off Linux/glibc, when ``MIM_JAX_HOST_MALLOC=0``,
  or when JAX has already started its CPU client (its worker threads would keep their own arenas).
  """
  global _tuned
  if _tuned is not None:
    return _tuned
  _tuned = False
  if os.environ.get('MIM_JAX_HOST_MALLOC', '1') == '0' or not sys.platform.startswith('linux'):
    return False
  if _jax_backend_started():
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc (e.g. musl)
    return False
  # One arena: a worker thread's arena cannot grow past 64 MiB and would fall back to mmap. No mmap: large blocks
  # come from the heap. Trim threshold -1: the heap is never trimmed, so freed blocks stay mapped for the next step.
  ok = mallopt(_M_ARENA_MAX, 1) == 1 and mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, -1) == 1
  _tuned = bool(ok)
  return _tuned


def _jax_backend_started() -> bool:
  if 'jax' not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge
    return bool(getattr(xla_bridge, '_backends', None))
  except ImportError:
    return False
