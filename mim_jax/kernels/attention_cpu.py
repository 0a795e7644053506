"""Fused float32 softmax attention for XLA:CPU: the C++ kernel in ``attention_cpu.cc``, called through the XLA FFI.

XLA:CPU runs attention as separate batched matrix products, transposes and softmax fusions over the
``[B, H, T, S]`` logits, which at ViT sizes costs 2-3x what the arithmetic needs (docs/performance.md,
"Fused CPU kernels"). The kernel does one (batch, head) pair per task with everything in cache.

The kernel is compiled on first use (``ffi_build``: g++, cached per machine). ``attention_impl='auto'`` (the
models' default) uses it where :func:`unsupported_reason` is None and the einsum path elsewhere; a failed build
warns once with the reason. ``MIM_JAX_CPU_ATTENTION=0`` turns it off.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mim_jax.kernels import ffi_build

LIBRARY = ffi_build.CpuKernelLibrary(
    'attention_cpu.cc',
    {'mim_jax_attention_cpu_forward': 'MimJaxAttentionForward',
     'mim_jax_attention_cpu_backward': 'MimJaxAttentionBackward',
     'mim_jax_attention_cpu_packed_forward': 'MimJaxAttentionPackedForward',
     'mim_jax_attention_cpu_packed_backward': 'MimJaxAttentionPackedBackward'},
    disable_env='MIM_JAX_CPU_ATTENTION', what='fused CPU attention kernel',
    fallback='attention uses the (slower) einsum path')


def available() -> bool:
  """Whether the kernel could be built and loaded here (built once per machine; see ffi_build)."""
  return LIBRARY.available()


def status_reason() -> str:
  return LIBRARY.status_reason()


def unsupported_reason(q_shape, dtype) -> str | None:
  """Why the kernel cannot take queries of this shape and dtype in this process (None: it can): it needs one
  CPU device (ffi_build.single_cpu_device_reason), float32, a head dim that is a multiple of 16, and a build."""
  if reason := ffi_build.single_cpu_device_reason():
    return reason
  if jnp.dtype(dtype) != jnp.float32:
    return f'dtype {jnp.dtype(dtype).name}, not float32'
  if q_shape[-1] % 16:
    return f'head dim {q_shape[-1]} is not a multiple of 16'
  if not available():
    return status_reason()
  return None


def _probs_type(b, h, t, s, dtype):
  return jax.ShapeDtypeStruct((b, h, t, -(-s // 16) * 16), dtype)  # the saved softmax, keys padded to 16


def _forward_call(q, k, v):
  b, t, h, _ = q.shape
  out_types = (jax.ShapeDtypeStruct(q.shape, q.dtype), _probs_type(b, h, t, k.shape[1], q.dtype))
  return LIBRARY.ffi_call('mim_jax_attention_cpu_forward', out_types)(q, k, v)


@jax.custom_vjp
def attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """``softmax(q k^T / sqrt(d)) v`` for ``q`` ``[B, T, H, D]`` and ``k``, ``v`` ``[B, S, H, D]`` (float32, D a
  multiple of 16) -> ``[B, T, H, D]``."""
  return _forward_call(q, k, v)[0]


def _attention_fwd(q, k, v):
  out, probs = _forward_call(q, k, v)
  return out, (q, k, v, probs)


def _attention_bwd(residuals, g):
  q, k, v, probs = residuals
  out_types = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v))
  return tuple(LIBRARY.ffi_call('mim_jax_attention_cpu_backward', out_types)(q, k, v, probs, g.astype(q.dtype)))


attention.defvjp(_attention_fwd, _attention_bwd)


def _packed_forward_call(qkv):
  b, n, _, h, d = qkv.shape
  out_types = (jax.ShapeDtypeStruct((b, n, h, d), qkv.dtype), _probs_type(b, h, n, n, qkv.dtype))
  return LIBRARY.ffi_call('mim_jax_attention_cpu_packed_forward', out_types)(qkv)


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
  return (LIBRARY.ffi_call('mim_jax_attention_cpu_packed_backward', out_type)(qkv, probs, g.astype(qkv.dtype)),)


packed_attention.defvjp(_packed_fwd, _packed_bwd)
