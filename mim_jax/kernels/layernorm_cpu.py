"""LayerNorm (float32) for XLA:CPU: the C++ kernel in ``layernorm_cpu.cc``, called through the XLA FFI.

Same math as ``flax.linen.LayerNorm(use_fast_variance=False)``: ``(x - mean) / sqrt(var + eps) * scale + bias``
over the last axis, with the two-pass variance. Built on first use (``ffi_build``). The models' ``layer_norm``
(``mim_jax.models.vit``) uses it where :func:`applies` holds (one CPU device, float32 compute) and flax's
``nn.LayerNorm`` elsewhere; ``MIM_JAX_CPU_LAYERNORM=0`` turns it off.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.kernels import ffi_build

LIBRARY = ffi_build.CpuKernelLibrary(
    'layernorm_cpu.cc', {'mim_jax_layernorm_cpu_forward': 'MimJaxLayerNormForward',
                         'mim_jax_layernorm_cpu_backward': 'MimJaxLayerNormBackward'},
    disable_env='MIM_JAX_CPU_LAYERNORM', what='CPU LayerNorm kernel', fallback="LayerNorm uses flax's XLA code")


def applies(dtype) -> bool:
  """Whether models computing in ``dtype`` use the kernel in this process (it builds the kernel if needed)."""
  return (jnp.dtype(dtype) == jnp.float32 and ffi_build.single_cpu_device_reason() is None
          and LIBRARY.available())


def _forward_call(x, scale, bias, epsilon):
  m, d = x.shape
  out_types = (jax.ShapeDtypeStruct((m, d), jnp.float32), jax.ShapeDtypeStruct((m,), jnp.float32),
               jax.ShapeDtypeStruct((m,), jnp.float32))
  return LIBRARY.ffi_call('mim_jax_layernorm_cpu_forward', out_types)(x, scale, bias, epsilon=np.float32(epsilon))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
  """LayerNorm of the rows of ``x`` ``[M, D]`` (float32) with ``scale`` and ``bias`` ``[D]``."""
  return _forward_call(x, scale, bias, epsilon)[0]


def _layer_norm_fwd(x, scale, bias, epsilon):
  y, mean, rstd = _forward_call(x, scale, bias, epsilon)
  return y, (x, scale, mean, rstd)


def _layer_norm_bwd(epsilon, residuals, g):
  x, scale, mean, rstd = residuals
  d = x.shape[1]
  out_types = (jax.ShapeDtypeStruct(x.shape, jnp.float32), jax.ShapeDtypeStruct((d,), jnp.float32),
               jax.ShapeDtypeStruct((d,), jnp.float32))
  return tuple(LIBRARY.ffi_call('mim_jax_layernorm_cpu_backward', out_types)(x, scale, mean, rstd,
                                                                             g.astype(jnp.float32)))


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)
