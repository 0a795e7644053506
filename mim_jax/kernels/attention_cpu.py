"""Fused float32 softmax attention for XLA:CPU: the C++ kernel in ``attention_cpu.cc``, called through the XLA FFI.

XLA:CPU runs attention as separate batched matrix products, transposes and softmax fusions over the
``[B, H, T, S]`` logits, which at ViT sizes costs 2-3x what the arithmetic needs (docs/performance.md,
"Fused CPU attention"). The kernel does one (batch, head) pair per task with everything in cache.

The kernel is compiled on first use with the system C++ compiler (``$CXX`` or ``g++``) against the
FFI headers that jaxlib ships, into ``~/.cache/mim_jax/kernels`` (``MIM_JAX_KERNEL_CACHE`` overrides), under a
name keyed by the source, the flags, jaxlib's version and the CPU's instruction-set flags (it is built with
``-march=native``). The build is atomic, so concurrent processes are safe. :func:`available` says whether it
could be built and loaded; ``attention_impl='auto'`` (the models' default) then uses it where
:func:`supported` holds and falls back to the einsum path elsewhere, with one warning naming the reason when
the build fails. ``MIM_JAX_CPU_ATTENTION=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings

import jax
import jax.numpy as jnp

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'attention_cpu.cc')
# -fno-math-errno lets expf inline; no -ffast-math: NaN and inf must propagate for the train step's guard.
# -fopenmp-simd: the `omp simd` loop hints only (threads come from XLA's pool, not OpenMP).
FLAGS = ('-O3', '-march=native', '-fopenmp-simd', '-fno-math-errno', '-fPIC', '-shared', '-std=c++17')
_TARGETS = {  # FFI target name -> the handler symbol in attention_cpu.cc
    'mim_jax_attention_cpu_forward': 'MimJaxAttentionForward',
    'mim_jax_attention_cpu_backward': 'MimJaxAttentionBackward',
    'mim_jax_attention_cpu_packed_forward': 'MimJaxAttentionPackedForward',
    'mim_jax_attention_cpu_packed_backward': 'MimJaxAttentionPackedBackward',
}

_lock = threading.Lock()
_status: dict[str, object] = {}  # 'ok': bool, 'reason': str (why not), 'path': the loaded library


def cache_dir() -> str:
  return os.environ.get('MIM_JAX_KERNEL_CACHE') or os.path.join(os.path.expanduser('~'), '.cache', 'mim_jax',
                                                                 'kernels')


def _cpu_flags() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      return next((line for line in f if line.startswith(('flags', 'Features'))), '')
  except OSError:
    return ''


def library_path(compiler: str) -> str:
  import jaxlib
  key = hashlib.sha256()
  for part in (open(SOURCE, 'rb').read(), ' '.join(FLAGS).encode(), compiler.encode(),
               jaxlib.__version__.encode(), _cpu_flags().encode()):
    key.update(part)
  return os.path.join(cache_dir(), f'attention_cpu-{key.hexdigest()[:16]}.so')


def build() -> str:
  """Compiles the kernel if no build for this source, compiler, jaxlib and CPU exists yet; returns its path."""
  compiler = os.environ.get('CXX', 'g++')
  if shutil.which(compiler) is None:
    raise RuntimeError(f'no C++ compiler {compiler!r} on PATH (install g++, or set CXX)')
  path = library_path(compiler)
  if os.path.exists(path):
    return path
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=os.path.dirname(path))
  os.close(fd)
  try:
    cmd = [compiler, *FLAGS, f'-I{jax.ffi.include_dir()}', SOURCE, '-o', tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
      raise RuntimeError(f'{" ".join(cmd)} failed:\n{proc.stderr[-2000:]}')
    os.replace(tmp, path)  # atomic: a concurrent build of the same key writes the same file
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def available() -> bool:
  """Builds (once per machine), loads and registers the kernel; False, with one warning, if that fails."""
  with _lock:
    if 'ok' not in _status:
      if os.environ.get('MIM_JAX_CPU_ATTENTION', '1') == '0':
        _status.update(ok=False, reason='MIM_JAX_CPU_ATTENTION=0')
      else:
        try:
          path = build()
          lib = ctypes.CDLL(path)
          for target, symbol in _TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform='cpu')
          _status.update(ok=True, path=path, reason='')
        except Exception as e:  # noqa: BLE001 - any failure means: use the einsum path
          _status.update(ok=False, reason=f'{type(e).__name__}: {e}')
          warnings.warn(f'mim_jax: the fused CPU attention kernel is unavailable, so attention uses the (slower) '
                        f'einsum path. Reason: {_status["reason"]}', stacklevel=2)
    return bool(_status['ok'])


def status_reason() -> str:
  """Why :func:`available` returned False ('' if it did not)."""
  return str(_status.get('reason', ''))


def unsupported_reason(q_shape, k_shape, dtype) -> str | None:
  """Why the kernel cannot take these operands in this process (None: it can). It needs the CPU backend with a
  single device (an FFI call has no sharding rule, so meshes of several devices use the einsum path), float32,
  and a head dim that is a multiple of 16."""
  if jax.default_backend() != 'cpu':
    return f'the backend is {jax.default_backend()!r}, not cpu'
  if jax.device_count() != 1:
    return f'{jax.device_count()} devices (the kernel has no sharding rule)'
  if jnp.dtype(dtype) != jnp.float32:
    return f'dtype {jnp.dtype(dtype).name}, not float32'
  if q_shape[-1] % 16:
    return f'head dim {q_shape[-1]} is not a multiple of 16'
  return None


def supported(q_shape, k_shape, dtype) -> bool:
  return unsupported_reason(q_shape, k_shape, dtype) is None and available()


def _probs_type(b, h, t, s, dtype):
  return jax.ShapeDtypeStruct((b, h, t, -(-s // 16) * 16), dtype)  # the saved softmax, keys padded to 16


def _forward_call(q, k, v):
  b, t, h, _ = q.shape
  out_types = (jax.ShapeDtypeStruct(q.shape, q.dtype), _probs_type(b, h, t, k.shape[1], q.dtype))
  return jax.ffi.ffi_call('mim_jax_attention_cpu_forward', out_types)(q, k, v)


@jax.custom_vjp
def attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """``softmax(q k^T / sqrt(d)) v`` for ``q`` ``[B, T, H, D]`` and ``k``, ``v`` ``[B, S, H, D]`` (float32, D a
  multiple of 16) -> ``[B, T, H, D]``. Call :func:`supported` first."""
  return _forward_call(q, k, v)[0]


def _attention_fwd(q, k, v):
  out, probs = _forward_call(q, k, v)
  return out, (q, k, v, probs)


def _attention_bwd(residuals, g):
  q, k, v, probs = residuals
  out_types = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v))
  return tuple(jax.ffi.ffi_call('mim_jax_attention_cpu_backward', out_types)(q, k, v, probs, g.astype(q.dtype)))


attention.defvjp(_attention_fwd, _attention_bwd)


def _packed_forward_call(qkv):
  b, n, _, h, d = qkv.shape
  out_types = (jax.ShapeDtypeStruct((b, n, h, d), qkv.dtype), _probs_type(b, h, n, n, qkv.dtype))
  return jax.ffi.ffi_call('mim_jax_attention_cpu_packed_forward', out_types)(qkv)


@jax.custom_vjp
def packed_attention(qkv: jax.Array) -> jax.Array:
  """:func:`attention` of ``q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]`` for ``qkv`` ``[B, N, 3, H, D]``
  (the qkv projection's output, reshaped for free), read and differentiated in place: no slicing copies in the
  forward pass and no concatenation of the three gradients in the backward pass."""
  return _packed_forward_call(qkv)[0]


def _packed_fwd(qkv):
  out, probs = _packed_forward_call(qkv)
  return out, (qkv, probs)


def _packed_bwd(residuals, g):
  qkv, probs = residuals
  out_type = jax.ShapeDtypeStruct(qkv.shape, qkv.dtype)
  return (jax.ffi.ffi_call('mim_jax_attention_cpu_packed_backward', out_type)(qkv, probs, g.astype(qkv.dtype)),)


packed_attention.defvjp(_packed_fwd, _packed_bwd)
