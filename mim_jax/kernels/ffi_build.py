"""Builds, loads and registers a C++ XLA FFI kernel library for the CPU, once per machine.

Each kernel module (``attention_cpu``, ``layernorm_cpu``) is one ``.cc`` file in this directory (plus the
shared ``*.h``). It is compiled on first use with the system C++ compiler (``$CXX`` or ``g++``) against the FFI
headers that jaxlib ships, into ``~/.cache/mim_jax/kernels`` (``MIM_JAX_KERNEL_CACHE`` overrides), under a
name keyed by the sources, the flags, jaxlib's version and the CPU's instruction-set flags (it is built with
``-march=native``). The build is atomic, so concurrent processes are safe. When the build or the load fails,
:meth:`CpuKernelLibrary.available` is False and warns once with the reason; the callers then use their XLA
path.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings

import jax

HERE = os.path.dirname(os.path.abspath(__file__))
# -fno-math-errno: libm calls without errno side effects; no -ffast-math: NaN and inf must propagate for the
# train step's non-finite guard.
# -fopenmp-simd: the `omp simd` loop hints only (threads come from XLA's pool, not OpenMP).
FLAGS = ('-O3', '-march=native', '-fopenmp-simd', '-fno-math-errno', '-fPIC', '-shared', '-std=c++17')


def cache_dir() -> str:
  return os.environ.get('MIM_JAX_KERNEL_CACHE') or os.path.join(os.path.expanduser('~'), '.cache', 'mim_jax',
                                                                 'kernels')


def _cpu_flags() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      return next((line for line in f if line.startswith(('flags', 'Features'))), '')
  except OSError:
    return ''


class CpuKernelLibrary:
  """``source`` (a .cc file here) exporting ``targets`` (FFI target name -> handler symbol); ``disable_env``=0
  turns it off; ``what`` and ``fallback`` word the warning."""

  def __init__(self, source: str, targets: dict[str, str], disable_env: str, what: str, fallback: str):
    self.source, self.targets, self.disable_env = os.path.join(HERE, source), targets, disable_env
    self.what, self.fallback = what, fallback
    self._lock = threading.Lock()
    self._status: dict[str, object] = {}

  def library_path(self, compiler: str) -> str:
    import jaxlib
    key = hashlib.sha256()
    for path in [self.source, *sorted(glob.glob(os.path.join(HERE, '*.h')))]:
      with open(path, 'rb') as f:
        key.update(f.read())
    for part in (' '.join(FLAGS), compiler, jaxlib.__version__, _cpu_flags()):
      key.update(part.encode())
    name = os.path.splitext(os.path.basename(self.source))[0]
    return os.path.join(cache_dir(), f'{name}-{key.hexdigest()[:16]}.so')

  def build(self) -> str:
    """Compiles the library unless a build for these sources, compiler, jaxlib and CPU exists; returns its path."""
    compiler = os.environ.get('CXX', 'g++')
    if shutil.which(compiler) is None:
      raise RuntimeError(f'no C++ compiler {compiler!r} on PATH (install g++, or set CXX)')
    path = self.library_path(compiler)
    if os.path.exists(path):
      return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.so', dir=os.path.dirname(path))
    os.close(fd)
    try:
      cmd = [compiler, *FLAGS, f'-I{jax.ffi.include_dir()}', self.source, '-o', tmp]
      print(f'building the C++ kernel {os.path.basename(self.source)} for this machine (once, ~10-30 s; cached in '
            f'{os.path.dirname(path)})', flush=True)
      proc = subprocess.run(cmd, capture_output=True, text=True)
      if proc.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)} failed:\n{proc.stderr[-2000:]}')
      os.replace(tmp, path)  # atomic: a concurrent build of the same key writes the same file
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
    return path

  def available(self) -> bool:
    """Builds (once per machine), loads and registers the library; False, with one warning, if that fails."""
    with self._lock:
      if 'ok' not in self._status:
        if os.environ.get(self.disable_env, '1') == '0':
          self._status.update(ok=False, reason=f'{self.disable_env}=0')
        else:
          try:
            path = self.build()
            lib = ctypes.CDLL(path)
            for target, symbol in self.targets.items():
              jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform='cpu')
            self._status.update(ok=True, path=path, reason='')
          except Exception as e:  # noqa: BLE001 - any failure means: use the XLA path
            self._status.update(ok=False, reason=f'{type(e).__name__}: {e}')
            warnings.warn(f'mim_jax: the {self.what} is unavailable, so {self.fallback}. '
                          f'Reason: {self._status["reason"]}', stacklevel=3)
      return bool(self._status['ok'])

  def status_reason(self) -> str:
    """Why :meth:`available` returned False ('' if it did not)."""
    return str(self._status.get('reason', ''))

  def ffi_call(self, target: str, out_types):
    """``jax.ffi.ffi_call`` of one of this library's targets, built and registered first (a clear error, not
    XLA's 'No FFI handler registered', when it cannot be). Under vmap it runs once per example."""
    if not self.available():
      raise RuntimeError(f'the {self.what} is unavailable: {self.status_reason()}')
    return jax.ffi.ffi_call(target, out_types, vmap_method='sequential')


def single_cpu_device_reason() -> str | None:
  """Why an FFI CPU kernel cannot run in this process (None: it can): it needs the CPU backend and one device
  (an FFI call has no sharding rule, so meshes of several devices use the XLA path)."""
  if jax.default_backend() != 'cpu':
    return f'the backend is {jax.default_backend()!r}, not cpu'
  if jax.device_count() != 1:
    return f'{jax.device_count()} devices (the kernel has no sharding rule)'
  return None
