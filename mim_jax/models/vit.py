"""Vision Transformer parts with the MAE reference semantics (DESIGN.md §3).

* Patch embedding is a linear map of each flattened ``(p, q, c)`` patch (identical to the reference's
  stride-p convolution, and a plain matmul on every backend).
* Positions are the fixed 2D sin-cos table; the CLS token's position row is zeros.
* Blocks are pre-norm (LayerNorm eps 1e-6), fused qkv with bias, MLP ratio 4, exact GELU.
* Init: xavier-uniform linear kernels (the fused qkv is one [D, 3D] matrix, as in the reference), zero
  biases, LayerNorm (1, 0), CLS / mask tokens normal(0.02).

Every parameter carries logical axis names ('embed', 'mlp', 'heads', 'patch', ...) so that a config's
sharding rules can map them to mesh axes (data-parallel or FSDP) without touching the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.kernels import attention_cpu, layernorm_cpu
from mim_jax.models import rope as rope_lib
from mim_jax.models.encoders import register_encoder
from mim_jax.targets import patchify, patchify_video
from mim_jax.utils.logging import log

Dtype = Any

# Logical axis names used in parameter and activation annotations.
BATCH, LENGTH, EMBED, MLP, HEADS, PATCH = 'batch', 'length', 'embed', 'mlp', 'heads', 'patch'


def sincos_2d_table(embed_dim: int, grid_h: int, grid_w: int, rows_first: bool = False) -> np.ndarray:
  """The MAE reference's fixed 2D sin-cos position table, ``[grid_h * grid_w, embed_dim]`` float32.

  The first half of the channels encodes the column index and the second half the row index (the
  reference builds its grid with ``meshgrid(grid_w, grid_h)``). Each half is ``[sin(pos * w), cos(pos * w)]``
  with ``w_k = 1 / 10000 ** (k / K)``, ``K = D / 4``; computed in float64 then cast, which reproduces the
  reference's values bit for bit. ``rows_first``: the row index in the first half (CAE's table, whose
  ``meshgrid(grid_w, grid_h)`` runs in 'ij' order, so its "w" coordinate is the row).
  """
  if embed_dim % 4:
    raise ValueError(f'sin-cos positions need a width divisible by 4, got {embed_dim}.')
  k = embed_dim // 4
  omega = 1.0 / 10000 ** (np.arange(k, dtype=np.float64) / k)
  rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64),
                           indexing='ij')

  def encode(pos):
    out = np.einsum('m,d->md', pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  halves = (rows, cols) if rows_first else (cols, rows)
  return np.concatenate([encode(h) for h in halves], axis=1).astype(np.float32)


def sincos_1d_table(embed_dim: int, num_tokens: int) -> np.ndarray:
  """VideoMAE's fixed 1-D sinusoid table over the flattened token index, ``[num_tokens, embed_dim]`` float32:
  ``angle[n, j] = n / 10000 ** (2 * (j // 2) / D)``, sin on the even channels and cos on the odd ones
  (interleaved, not concatenated); computed in float64 then cast, as the reference does."""
  pos = np.arange(num_tokens, dtype=np.float64)[:, None]
  j = np.arange(embed_dim)
  angle = pos / np.power(10000, 2 * (j // 2) / embed_dim)
  table = np.where(j % 2 == 0, np.sin(angle), np.cos(angle))
  return table.astype(np.float32)


def _param_init(init: Callable, names: tuple[str | None, ...]) -> Callable:
  return nn.with_logical_partitioning(init, names)


xavier = nn.initializers.xavier_uniform()
zeros = nn.initializers.zeros
ones = nn.initializers.ones
token_init = nn.initializers.normal(stddev=0.02)


def dense(features: int, names: tuple[str, str], dtype: Dtype, name: str, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, kernel_init=_param_init(xavier, names), use_bias=use_bias,
                  bias_init=_param_init(zeros, (names[1],)), name=name)


def token_dense(layer: nn.Dense, x: jax.Array) -> jax.Array:
  """``layer`` applied to ``x [..., tokens, in]`` as one 2D matrix product over all tokens.

  Same values and parameters as ``layer(x)``, but its weight gradient then contracts a single (tokens) axis:
  given ``[batch, tokens]`` as two contracted axes, XLA:CPU transposes the output gradient (and recomputes the
  GELU gradient for the copy) before every weight-gradient product; see docs/performance.md."""
  return layer(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)


class CpuLayerNorm(nn.Module):
  """``nn.LayerNorm``'s parameters (``scale``, ``bias``) and math, run by the C++ kernel
  (``mim_jax.kernels.layernorm_cpu``: one pass over each row forward and one backward)."""

  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    scale = self.param('scale', _param_init(ones, (EMBED,)), (d,), jnp.float32)
    bias = self.param('bias', _param_init(zeros, (EMBED,)), (d,), jnp.float32)
    y = layernorm_cpu.layer_norm(x.reshape(-1, d).astype(jnp.float32), scale, bias, self.epsilon)
    return y.reshape(x.shape)


def layer_norm(dtype: Dtype, name: str, epsilon: float = 1e-6) -> nn.Module:
  """LayerNorm (eps 1e-6 unless given, two-pass variance): the CPU kernel where it applies (one CPU device,
  float32), else flax's. Same parameters either way."""
  if layernorm_cpu.applies(dtype):
    return CpuLayerNorm(epsilon=epsilon, name=name)
  # Statistics in float32 whatever the compute dtype: this is where bf16 training goes unstable.
  return nn.LayerNorm(epsilon=epsilon, dtype=dtype, param_dtype=jnp.float32,
                      scale_init=_param_init(ones, (EMBED,)), bias_init=_param_init(zeros, (EMBED,)),
                      name=name, use_fast_variance=False)


class RMSNorm(nn.Module):
  """LLaMA's RMSNorm (iLLaMA's): ``x / sqrt(mean(x ** 2) + eps) * scale``, no centring and no bias; the statistics
  in float32 whatever the compute dtype."""

  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param('scale', _param_init(ones, (EMBED,)), (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return y.astype(self.dtype) * scale.astype(self.dtype)


NORMS = ('layernorm', 'rmsnorm', 'layernorm_eps1e-5')


def norm_layer(kind: str, dtype: Dtype, name: str) -> nn.Module:
  """The block's normalization: 'layernorm' (:func:`layer_norm`, MAE's) or 'rmsnorm' (LLaMA's), eps 1e-6; or
  'layernorm_eps1e-5' (torch's default eps: Point-MAE's blocks)."""
  if kind == 'layernorm':
    return layer_norm(dtype, name)
  if kind == 'layernorm_eps1e-5':
    return layer_norm(dtype, name, 1e-5)
  if kind == 'rmsnorm':
    return RMSNorm(1e-6, dtype, name=name)
  raise ValueError(f'norm must be one of {NORMS}, got {kind!r}.')


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
  return nn.with_logical_constraint(x, names)


@jax.custom_vjp
def materialize_cotangent(x: jax.Array) -> jax.Array:
  """Identity whose cotangent passes an ``optimization_barrier``: the residual stream's gradient is then computed
  once per block instead of being re-derived inside every consumer (see mim_jax.perf for why XLA:CPU needs it)."""
  return x


def _materialize_fwd(x):
  return x, None


def _materialize_bwd(_, g):
  return (jax.lax.optimization_barrier(g),)


materialize_cotangent.defvjp(_materialize_fwd, _materialize_bwd)


def gelu_exact(x: jax.Array) -> jax.Array:
  """``x * Phi(x)`` written with ``erf``, as PyTorch computes it. (flax's form uses ``erfc``, whose XLA expansion
  evaluates two ~60-term branches per element; XLA:CPU then repeats that in each consumer of the activation.)"""
  return x * (0.5 + 0.5 * jax.lax.erf(x * np.float32(2**-0.5)).astype(x.dtype))


ATTENTION_IMPLS = ('auto', 'einsum', 'cpu_fused', 'xla', 'cudnn')
QKV_BIASES = ('qkv', 'qv', 'none')
_FALLBACKS_LOGGED: set[str] = set()


def soft_causal_mask(n: int, rate: jax.Array) -> jax.Array:
  """iLLaMA's soft causal mask ``[n, n]`` float32: ``rate * 1 + (1 - rate) * tril(1)``. It *multiplies* the
  attention probabilities after the softmax, without renormalizing: ``rate = 1`` is full attention, ``rate = 0``
  zeroes every weight on a later token (rows then sum to less than 1, unlike a -inf mask before the softmax)."""
  rate = jnp.asarray(rate, jnp.float32)
  return rate * jnp.ones((n, n), jnp.float32) + (1 - rate) * jnp.tril(jnp.ones((n, n), jnp.float32))


def check_attention_impl(attention_impl: str, platform: str) -> None:
  """A clear error, before anything compiles, for an attention implementation this platform cannot run."""
  if attention_impl == 'cudnn' and platform != 'gpu':
    raise ValueError(f"config.attention_impl='cudnn' (cuDNN flash attention) needs an NVIDIA GPU, but this run's "
                     f"devices are {platform!r}. Use 'auto' (the default), 'einsum' or 'xla' here.")
  if attention_impl == 'cpu_fused' and platform != 'cpu':
    raise ValueError(f"config.attention_impl='cpu_fused' is a CPU kernel, but this run's devices are {platform!r}. "
                     f"Use 'auto' (the default), 'einsum', 'xla' or 'cudnn' here.")


def jax_attention(q: jax.Array, k: jax.Array, v: jax.Array, implementation: str) -> jax.Array:
  """``jax.nn.dot_product_attention`` on ``[B, T, H, D]`` queries and ``[B, S, H, D]`` keys/values.

  cuDNN's training kernels refuse odd sequence lengths (jax raises "Unsupported sequence length Q 197, KV
  197"), and a ViT's class token makes them odd (196 + 1). So odd lengths are padded by one token and the padded
  keys masked out through ``key_value_seq_lengths``; the padded query rows are sliced off (their cotangent is
  zero). Even lengths, and the 'xla' implementation, go straight through.
  """
  t, s = q.shape[1], k.shape[1]
  if implementation != 'cudnn' or (t % 2 == 0 and s % 2 == 0):
    return jax.nn.dot_product_attention(q, k, v, implementation=implementation)
  return padded_attention(q, k, v, implementation)


def padded_attention(q: jax.Array, k: jax.Array, v: jax.Array, implementation: str) -> jax.Array:
  """Attention with both sequence lengths padded to even and the padding masked (see ``jax_attention``)."""
  b, t, s = q.shape[0], q.shape[1], k.shape[1]
  pad = lambda x: jnp.pad(x, ((0, 0), (0, x.shape[1] % 2), (0, 0), (0, 0)))
  out = jax.nn.dot_product_attention(pad(q), pad(k), pad(v), implementation=implementation,
                                     query_seq_lengths=jnp.full((b,), t, jnp.int32),
                                     key_value_seq_lengths=jnp.full((b,), s, jnp.int32))
  return out[:, :t]


class Attention(nn.Module):
  num_heads: int
  dtype: Dtype = jnp.float32
  # 'auto' | 'einsum' | 'cpu_fused' (mim_jax.kernels.attention_cpu) | 'xla' | 'cudnn' (jax.nn.dot_product_attention)
  attention_impl: str = 'auto'
  # 'qkv': one bias on the fused projection (MAE); 'qv': biases on queries and values only (BEiT / CAE: the key
  # bias is fixed at zero; it would only shift each query's logits by a constant); 'none'.
  qkv_bias: str = 'qkv'
  rope_layout: str = 'half'  # the channel pairing of ``rope``'s table (mim_jax.models.rope)

  @nn.compact
  def __call__(self, x: jax.Array, query_ids: jax.Array | None = None, cls_attention: bool = False,
               rope: jax.Array | None = None, soft_causal: jax.Array | None = None):
    """``x`` ``[B, N, D]`` -> ``[B, N, D]``; with ``query_ids`` ``[B, M]`` only those tokens attend (to all N)
    and the result is ``[B, M, D]``. ``rope``: the tokens' rotary table ``[B or 1, N, 2, head_dim]``
    (:mod:`mim_jax.models.rope`), applied to queries and keys. ``cls_attention``: also return token 0's attention
    to tokens 1..N-1, averaged over heads, ``[B, N - 1]`` float32 (a teacher's saliency, MaskAlign / MR-MAE):
    this needs the attention probabilities, so it runs the einsum path whatever ``attention_impl`` says.
    ``soft_causal``: iLLaMA's rate ``r`` (a traced scalar): the probabilities are multiplied by
    :func:`soft_causal_mask`; only the einsum path forms them, so other implementations fall back to it."""
    b, n, d = x.shape
    if d % self.num_heads:
      raise ValueError(f'width {d} is not divisible by num_heads {self.num_heads}.')
    if self.qkv_bias not in QKV_BIASES:
      raise ValueError(f'qkv_bias must be one of {QKV_BIASES}, got {self.qkv_bias!r}.')
    hd = d // self.num_heads
    qkv = token_dense(dense(3 * d, (EMBED, HEADS), self.dtype, 'qkv', use_bias=self.qkv_bias == 'qkv'), x)
    if self.qkv_bias == 'qv':
      q_bias, v_bias = (self.param(name, _param_init(zeros, (HEADS,)), (d,), jnp.float32)
                        for name in ('q_bias', 'v_bias'))
      qkv = qkv + jnp.concatenate([q_bias, jnp.zeros_like(q_bias), v_bias]).astype(qkv.dtype)
    # The fused output is ordered (3, heads, head_dim), as in the reference's [3D, D] weight.
    # split (whose gradient is one concatenate) rather than indexing a [3, ...] view (one pad + add per part).
    q, k, v = (t.reshape(b, n, self.num_heads, hd) for t in jnp.split(qkv, 3, axis=-1))
    if rope is not None:
      q, k = (rope_lib.apply_rope(t, rope, self.rope_layout) for t in (q, k))
    if query_ids is not None:
      q = jnp.take_along_axis(q, query_ids[:, :, None, None], axis=1)
    impl = self.attention_impl
    if cls_attention:
      if query_ids is not None:
        raise ValueError('cls_attention needs every query (query_ids must be None).')
      impl = 'einsum'  # the only path that forms the probabilities
    if soft_causal is not None:
      if query_ids is not None:
        raise ValueError('the soft causal mask needs every query (query_ids must be None).')
      if impl not in ('auto', 'einsum') and impl not in _FALLBACKS_LOGGED:
        _FALLBACKS_LOGGED.add(impl)  # once per process, not once per block and trace
        log(f"attention_impl={impl!r} cannot multiply the attention probabilities by iLLaMA's soft causal mask "
            "(it acts after the softmax, without renormalizing): this attention runs the einsum path instead.")
      impl = 'einsum'
    if impl in ('auto', 'cpu_fused'):
      reason = attention_cpu.unsupported_reason(q.shape, q.dtype)
      if reason and impl == 'cpu_fused':
        raise ValueError(f"attention_impl='cpu_fused' cannot run here: {reason.rstrip('.')}. "
                         f"Use attention_impl='auto', which falls back to 'einsum' where the kernel does not apply.")
      impl = 'einsum' if reason else 'cpu_fused'  # 'auto': the fused CPU kernel where it applies
    if impl == 'cpu_fused' and query_ids is None and rope is None:  # straight from the [B, N, 3, H, D] output
      out = attention_cpu.packed_attention(qkv.reshape(b, n, 3, self.num_heads, hd))
    elif impl == 'cpu_fused':
      out = attention_cpu.attention(q, k, v)
    elif impl == 'einsum':
      # Logits accumulate and the softmax runs in float32 whatever the compute dtype (the precision policy).
      logits = jnp.einsum('bqhd,bkhd->bhqk', q * (hd ** -0.5), k, preferred_element_type=jnp.float32)
      weights = jax.nn.softmax(logits, axis=-1)
      if soft_causal is not None:
        weights = weights * soft_causal_mask(n, soft_causal)
      weights = weights.astype(v.dtype)
      out = jnp.einsum('bhqk,bkhd->bqhd', weights, v)
    elif impl in ('xla', 'cudnn'):
      if impl == 'cudnn' and q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"attention_impl='cudnn' (cuDNN flash attention) takes bfloat16 or float16 operands, but "
                         f"this model computes in {q.dtype}. Set config.compute_dtype='bfloat16' (or 'float16'), "
                         f"or use attention_impl='xla' in float32.")
      out = jax_attention(q, k, v, impl)
    else:
      raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}.")
    out = token_dense(dense(d, (HEADS, EMBED), self.dtype, 'proj'), out.reshape(b, q.shape[1], d))
    if cls_attention:
      return out, jnp.mean(weights[:, :, 0, 1:].astype(jnp.float32), axis=1)
    return out


class Mlp(nn.Module):
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    h = token_dense(dense(self.hidden, (EMBED, MLP), self.dtype, 'fc1'), x)
    h = gelu_exact(h)
    return token_dense(dense(d, (MLP, EMBED), self.dtype, 'fc2'), h)


MLPS = ('gelu', 'swiglu')


def swiglu_hidden(width: int, mlp_ratio: float, multiple_of: int = 256) -> int:
  """LLaMA's SwiGLU hidden size: two thirds of the GELU MLP's ``int(width * mlp_ratio)`` (so the three matrices
  cost what two did), rounded up to a multiple of ``multiple_of``: 192 -> 512, 384 -> 1024, 768 -> 2048."""
  hidden = int(2 * int(width * mlp_ratio) / 3)
  return multiple_of * -(-hidden // multiple_of)


class SwiGLU(nn.Module):
  """LLaMA's MLP, ``fc2(silu(fc1 x) * fc3 x)``, without biases (iLLaMA's ``Mlp``)."""

  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    gate, up = (token_dense(dense(self.hidden, (EMBED, MLP), self.dtype, name, use_bias=False), x)
                for name in ('fc1', 'fc3'))
    return token_dense(dense(d, (MLP, EMBED), self.dtype, 'fc2', use_bias=False), jax.nn.silu(gate) * up)


class DropPath(nn.Module):
  """Stochastic depth: drops the residual branch per example (used in fine-tuning)."""

  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    flag = jax.random.bernoulli(self.make_rng('dropout'), keep, shape)
    return jnp.where(flag, x / keep, 0).astype(x.dtype)


class Block(nn.Module):
  num_heads: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  dtype: Dtype = jnp.float32
  attention_impl: str = 'auto'
  # LayerScale (CaiT; BEiT / CAE): each residual branch times a learned per-channel gamma starting at this value
  # (params gamma_1, gamma_2); 0 = off (no params).
  layer_scale: float = 0.0
  norm: str = 'layernorm'  # NORMS
  mlp: str = 'gelu'  # MLPS
  swiglu_multiple_of: int = 256
  qkv_bias: str = 'qkv'  # QKV_BIASES
  rope_layout: str = 'half'

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True, query_ids: jax.Array | None = None,
               cls_attention: bool = False, rope: jax.Array | None = None, soft_causal: jax.Array | None = None):
    """``[B, N, D]`` -> ``[B, N, D]``; with ``query_ids`` ``[B, M]``, only those tokens' outputs ``[B, M, D]``
    (they still attend to all N): the last block of a decoder whose loss reads only some tokens.
    ``cls_attention``: returns ``(x, CLS attention [B, N - 1])``; ``soft_causal``: iLLaMA's mask rate (see
    :class:`Attention`)."""
    d = x.shape[-1]
    x = constrain(x, (BATCH, LENGTH, EMBED))
    attn = Attention(self.num_heads, self.dtype, self.attention_impl, self.qkv_bias, self.rope_layout, name='attn')
    y = attn(norm_layer(self.norm, self.dtype, 'norm1')(x), query_ids, cls_attention, rope, soft_causal)
    if cls_attention:
      y, attention = y
    if query_ids is not None:
      x = jnp.take_along_axis(x, query_ids[:, :, None], axis=1)
    x = materialize_cotangent(x + DropPath(self.drop_path, name='drop_path1')(self._scale(y, 'gamma_1'),
                                                                             deterministic))
    if self.mlp == 'gelu':
      mlp = Mlp(int(d * self.mlp_ratio), self.dtype, name='mlp')
    elif self.mlp == 'swiglu':
      mlp = SwiGLU(swiglu_hidden(d, self.mlp_ratio, self.swiglu_multiple_of), self.dtype, name='mlp')
    else:
      raise ValueError(f'mlp must be one of {MLPS}, got {self.mlp!r}.')
    y = mlp(norm_layer(self.norm, self.dtype, 'norm2')(x))
    x = materialize_cotangent(x + DropPath(self.drop_path, name='drop_path2')(self._scale(y, 'gamma_2'),
                                                                             deterministic))
    return (x, attention) if cls_attention else x

  def _scale(self, y: jax.Array, name: str) -> jax.Array:
    return y if not self.layer_scale else y * layer_scale_param(self, name, y.shape[-1], self.layer_scale, y.dtype)


def layer_scale_param(module: nn.Module, name: str, width: int, value: float, dtype: Dtype) -> jax.Array:
  """A LayerScale gamma ``[width]`` starting at ``value``, inside ``module``'s compact method."""
  init = _param_init(lambda _, shape: jnp.full(shape, value, jnp.float32), (EMBED,))
  return module.param(name, init, (width,)).astype(dtype)


# Rematerialization policies for a transformer block (config ``remat``): what the backward pass may keep from
# the forward pass instead of recomputing it.
REMAT_POLICIES: dict[str, Callable] = {
    'full': jax.checkpoint_policies.nothing_saveable,  # keep only the block input: least memory, ~1/3 more compute
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep weight-matmul outputs; recompute
                                                                       # norms, GELU and attention
}


def remat_policy_name(remat: bool | str | None) -> str:
  """Normalizes config ``remat``: False/None/'none' -> 'none', True -> 'full', or a name in REMAT_POLICIES."""
  if isinstance(remat, str) and remat.lower() in ('true', 'false'):  # --config.remat=True on the command line
    remat = remat.lower() == 'true'
  if remat is None or remat is False or remat == 'none':
    return 'none'
  if remat is True:
    return 'full'
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat={remat!r} is not a rematerialization policy; use 'none', "
                     f"{', '.join(repr(k) for k in REMAT_POLICIES)} (or True for 'full').")
  return remat


def block_class(remat: bool | str | None) -> type[Block]:
  name = remat_policy_name(remat)
  if name == 'none':
    return Block
  # deterministic and cls_attention are static (callers pass all four arguments positionally: remat checks that
  # every static index is within the call's arguments)
  return nn.remat(Block, static_argnums=(2, 4), policy=REMAT_POLICIES[name])


@dataclasses.dataclass(frozen=True)
class ViTSize:
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0


# Named encoder sizes (width, depth, heads) as in ViT/DeiT/MAE.
VIT_SIZES: dict[str, ViTSize] = {
    'tiny': ViTSize(192, 12, 3),
    'small': ViTSize(384, 12, 6),
    'base': ViTSize(768, 12, 12),
    'large': ViTSize(1024, 24, 16),
    'huge': ViTSize(1280, 32, 16),
}


# iLLaMA (Wang et al. 2024, techmonsterwang/iLLaMA models/illama.py): a ViT whose blocks are LLaMA's. The
# 'illama_{tiny,small,base,large}' variants are the ViT sizes with these options (explicit fields win).
ILLAMA_OPTIONS = {'class_token': 'last', 'pos_embed': 'learned', 'rope': '1d', 'norm': 'rmsnorm', 'mlp': 'swiglu',
                  'qkv_bias': 'qkv', 'causal_mask': 'soft'}


def parse_variant(variant: str) -> tuple[ViTSize, int]:
  """'base/16' -> (ViTSize for base, patch 16). Sizes: tiny, small, base, large, huge; 'illama_tiny/16' etc.
  name the same sizes (their block options: :func:`variant_options`)."""
  try:
    size, patch = variant.split('/')
    return VIT_SIZES[size.removeprefix('illama_')], int(patch)
  except (ValueError, KeyError):
    raise ValueError(f'unknown ViT variant {variant!r}; use NAME/PATCH with NAME in {sorted(VIT_SIZES)} (or '
                     'illama_NAME), e.g. base/16, or set width/depth/num_heads explicitly.') from None


def variant_options(variant: str) -> dict[str, Any]:
  """The block options a variant name implies: iLLaMA's for 'illama_*', none otherwise."""
  return dict(ILLAMA_OPTIONS) if variant.startswith('illama_') else {}


def soft_mask_schedule(rate: float, cutoff_steps: int, schedule: str = 'constant') -> Callable[[Any], jax.Array]:
  """iLLaMA's soft-mask schedule (``mask_scheduler.py``, mode 'soft') as a function of the step: ``rate`` for the
  first ``cutoff_steps`` steps ('constant') or a linear ramp from ``rate`` to 0 over them ('linear', numpy's
  ``linspace(rate, 0, cutoff_steps)``), then 0 (fully causal). Mode 'standard' (one rate all along) is
  ``cutoff_steps`` >= the run's length with 'constant'. jnp in and out: the step is traced, so the train step
  compiles once."""
  if schedule not in ('constant', 'linear'):
    raise ValueError(f"the soft-mask schedule must be 'constant' or 'linear', got {schedule!r}.")
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f'the soft-mask rate must be in [0, 1] (1: full attention, 0: causal), got {rate}.')

  def at(step):
    step = jnp.asarray(step, jnp.float32)
    if schedule == 'constant':
      early = jnp.float32(rate)
    else:
      early = rate * (1.0 - step / max(cutoff_steps - 1, 1)) if cutoff_steps > 1 else jnp.float32(rate)
    return jnp.where(step < cutoff_steps, early, 0.0).astype(jnp.float32)

  return at


@register_encoder('vit')
class ViTEncoder(nn.Module):
  """ViT encoder on images ``[B, H, W, C]`` (the MAE reference's; the encoder contract is in
  :mod:`mim_jax.models.encoders`).

  ``ids_keep`` (MAE): encode only those tokens (visible-only encoder, E1).
  ``mask`` (SimMIM-style, E2): replace masked tokens with a learned mask token (needs ``use_mask_token``).
  Neither: all tokens (feature extraction / fine-tuning).
  Returns the feature dict: ``tokens`` ``[B, 1 + K, D]`` (token 0 is CLS) after the final norm, ``cls``,
  ``patch_tokens`` (the K encoded patch tokens) and ``pooled`` (their mean).
  """

  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  use_mask_token: bool = False
  drop_path: float = 0.0
  dtype: Dtype = jnp.float32
  attention_impl: str = 'auto'
  remat: bool | str = False  # see REMAT_POLICIES
  # False: return the last block's output unnormalized. MAE fine-tuning with global pooling drops the final norm
  # and normalizes the pooled feature instead (fc_norm).
  final_norm: bool = True
  # 'sincos': the fixed table, computed for whatever grid the images give (MAE). 'sincos_rows_first': the same
  # with the row index in the first half of the channels (CAE's layout). 'learned': a trained table
  # `pos_embed` [1, 1 + N, D] whose row 0 is the CLS token's (timm / fine-tuned checkpoints); it fits one grid
  # only (resize it with mim_jax.interop.pos_embed.resize_pos_embed).
  pos_embed: str = 'sincos'
  layer_scale: float = 0.0  # LayerScale gammas in every block starting at this value (CAE/BEiT: 0.1); 0 = off
  # 'first': a CLS token before the patches (MAE); 'last': after them (iLLaMA: under a causal mask it sees every
  # patch); 'none': patches only (CroCo), so the feature dict's 'cls' is None and 'tokens' are the patch tokens.
  class_token: str = 'first'
  # 'none'; '2d': CroCo v2's rotary positions on queries and keys in every block (rows on half of each head's
  # channels, columns on the other; needs class_token='none'), base 100; '1d': LLaMA's over the sequence index
  # (CLS included; iLLaMA), base 10000. rope_base None = that kind's default.
  rope: str = 'none'
  rope_base: float | None = None
  # Block options (each off by default, and then the model is MAE's ViT): NORMS, MLPS (SwiGLU's hidden size is a
  # multiple of swiglu_multiple_of), QKV_BIASES.
  norm: str = 'layernorm'
  mlp: str = 'gelu'
  swiglu_multiple_of: int = 256
  qkv_bias: str = 'qkv'
  # 'none' | 'soft': iLLaMA's soft causal mask on every block's attention probabilities, with the rate given to
  # __call__ (soft_mask_rate; a traced value, so a schedule does not recompile).
  causal_mask: str = 'none'
  # Frames per tubelet for clips [B, T, H, W, C] (VideoMAE: 2; the tubelet embedding is a Conv3d with kernel and
  # stride (t, p, p), tokens time-major); 0: the encoder takes images only.
  tubelet_size: int = 0

  @classmethod
  def from_config(cls, cfg, **overrides) -> ViTEncoder:
    """From a config block with either ``variant`` ('base/16') or explicit sizes, plus run settings."""
    fields = dict(cfg)
    variant = fields.pop('variant', None)
    if variant:
      size, patch = parse_variant(variant)
      fields = {'patch_size': patch, 'width': size.width, 'depth': size.depth, 'num_heads': size.num_heads,
                'mlp_ratio': size.mlp_ratio, **variant_options(variant),
                **{k: v for k, v in fields.items() if v is not None}}
    fields.update(overrides)
    known = {f.name for f in dataclasses.fields(cls)} - {'parent', 'name'}
    unknown = sorted(set(fields) - known)
    if unknown:
      raise ValueError(f'unknown encoder setting(s) {unknown} for the ViT; known: {sorted(known)}.')
    return cls(**fields)

  def token_grid(self, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The token grid of an input's per-example shape: ``(gh, gw)`` for an image ``(H, W, C)``, ``(gt, gh, gw)``
    for a clip ``(T, H, W, C)``."""
    if len(shape) == 3:
      return self.grid(tuple(shape[:2]))
    if len(shape) != 4:
      raise ValueError(f'the ViT takes images [B, H, W, C] or clips [B, T, H, W, C], got per-example shape {shape}.')
    if self.tubelet_size < 1:
      raise ValueError('clips [B, T, H, W, C] need a tubelet embedding: set model.encoder.tubelet_size (VideoMAE: 2).')
    if shape[0] % self.tubelet_size:
      raise ValueError(f'{shape[0]} frames are not a whole number of tubelets of {self.tubelet_size}.')
    return (shape[0] // self.tubelet_size, *self.grid(tuple(shape[1:3])))

  def grid(self, images_hw: tuple[int, int]) -> tuple[int, int]:
    h, w = images_hw
    if h % self.patch_size or w % self.patch_size:
      raise ValueError(f'image size {h}x{w} is not divisible by the patch size {self.patch_size}.')
    return h // self.patch_size, w // self.patch_size

  @property
  def num_layers(self) -> int:
    """Layer ids run from 0 (embeddings) to ``depth + 1`` (after the last block): BEiT / MAE layer decay."""
    return self.depth + 1

  def layer_id(self, names) -> int:
    """The layer of a parameter given the names along its path: 0 for ``patch_embed``, ``cls_token``,
    ``mask_token`` and ``pos_embed*``; ``i + 1`` inside ``blocks_{i}``; ``depth + 1`` for the rest (final norm,
    and whatever a classifier puts after the encoder)."""
    for name in names:
      if name in ('patch_embed', 'cls_token', 'mask_token') or name.startswith('pos_embed'):
        return 0
      if name.startswith('blocks_') and name[len('blocks_'):].isdigit():
        i = int(name[len('blocks_'):])
        if i >= self.depth:
          raise ValueError(f'parameter under {name!r} but the encoder has depth {self.depth}')
        return i + 1
    return self.depth + 1

  def for_finetuning(self, *, drop_path: float, pooled: bool, dtype: Dtype, remat) -> ViTEncoder:
    """MAE's fine-tune encoder: drop path, no mask token, and with global pooling no final norm (the
    classifier's ``fc_norm`` normalizes the pooled feature instead, as in the reference)."""
    return self.clone(drop_path=float(drop_path), use_mask_token=False, final_norm=not pooled, dtype=dtype,
                      remat=remat)

  @property
  def resolved_rope_base(self) -> float:
    """``rope_base``, or the default of the RoPE kind: 100 for '2d' (CroCo v2), 10000 for '1d' (LLaMA)."""
    if self.rope_base is not None:
      return float(self.rope_base)
    return 10000.0 if self.rope == '1d' else 100.0

  def check_options(self) -> None:
    """One-line errors for option values and combinations the model does not define."""
    choices = {'class_token': ('first', 'last', 'none'), 'rope': ('none', '1d', '2d'), 'norm': NORMS,
               'mlp': MLPS, 'qkv_bias': QKV_BIASES, 'causal_mask': ('none', 'soft'),
               'pos_embed': ('sincos', 'sincos_rows_first', 'sincos_1d', 'learned', 'none')}
    for field, allowed in choices.items():
      if getattr(self, field) not in allowed:
        raise ValueError(f'model.encoder.{field} must be one of {allowed}, got {getattr(self, field)!r}.')
    if self.pos_embed == 'learned' and self.class_token == 'none':
      raise ValueError("pos_embed='learned' (a table with a row for the CLS token) needs a CLS token: "
                       "class_token='first' or 'last'.")
    if self.rope == '2d' and self.class_token != 'none':
      raise ValueError("rope='2d' gives positions to patch tokens only: use class_token='none' (CroCo v2).")
    if self.tubelet_size and (self.pos_embed not in ('sincos_1d', 'none') or self.rope != 'none'):
      raise ValueError("a video ViT (tubelet_size > 0) numbers its tokens time-major: use pos_embed='sincos_1d' "
                       "(VideoMAE's table) and rope='none'.")

  @nn.compact
  def __call__(self, images: jax.Array, ids_keep: jax.Array | None = None,
               mask: jax.Array | None = None, deterministic: bool = True,
               hidden: tuple[int, ...] = (), cls_attention: bool = False,
               soft_mask_rate: jax.Array | float | None = None) -> dict[str, jax.Array]:
    """``hidden``: 0-based block indices whose outputs (the residual stream after that block, before the final
    norm, ``[B, 1 + K, D]``) are also returned, in that order, under ``'hidden'`` (feature distillation).
    ``cls_attention``: the last block's attention from CLS to each of the K patch tokens, averaged over heads,
    ``[B, K]`` float32, under ``'cls_attention'`` (a teacher's saliency for attention-guided masking).
    ``soft_mask_rate``: iLLaMA's rate r in [0, 1] with ``causal_mask='soft'`` (1: full attention, 0: causal;
    None: 0, the official model's initial value)."""
    self.check_options()
    if images.ndim == 5:  # a clip: tubelets, time-major
      gt, gh, gw = self.token_grid(images.shape[1:])
      patches = patchify_video(images, self.tubelet_size, self.patch_size)
    elif images.ndim == 4:
      gt, (gh, gw) = 1, self.grid(images.shape[1:3])
      patches = patchify(images, self.patch_size)
    else:
      raise ValueError(f'images must be [batch, height, width, channels] (or clips [batch, frames, height, width, '
                       f'channels]), got shape {images.shape}.')
    x = token_dense(dense(self.width, (PATCH, EMBED), self.dtype, 'patch_embed'), patches.astype(self.dtype))
    if mask is not None:
      if not self.use_mask_token:
        raise ValueError('this encoder was built without a mask token (use_mask_token=False).')
      token = self.param('mask_token', _param_init(token_init, (None, None, EMBED)), (1, 1, self.width))
      x = jnp.where(mask[..., None] > 0.5, token.astype(x.dtype), x)
    if self.pos_embed in ('sincos', 'sincos_rows_first'):
      x = x + sincos_2d_table(self.width, gh, gw, self.pos_embed == 'sincos_rows_first')[None].astype(x.dtype)
      cls_pos = None
    elif self.pos_embed == 'sincos_1d':
      x = x + sincos_1d_table(self.width, gt * gh * gw)[None].astype(x.dtype)
      cls_pos = None
    elif self.pos_embed == 'none':  # no absolute positions (RoPE gives relative ones)
      cls_pos = None
    else:  # 'learned': one row per patch and one for the CLS token, in the token order (timm: CLS first)
      table = self._learned_pos_table(gh, gw).astype(x.dtype)
      if self.class_token == 'last':
        x, cls_pos = x + table[:, :-1], table[:, -1:]
      else:
        x, cls_pos = x + table[:, 1:], table[:, :1]
    if ids_keep is not None:
      x = jnp.take_along_axis(x, ids_keep[..., None], axis=1)
    has_cls, cls_last = self.class_token != 'none', self.class_token == 'last'
    if cls_attention and self.class_token != 'first':
      raise ValueError("cls_attention needs the CLS token first (class_token='first').")
    soft_causal = None
    if self.causal_mask == 'soft':
      if ids_keep is not None:
        raise ValueError("causal_mask='soft' over MAE-style visible tokens is undefined: they are a random subset in "
                         "shuffled order, so 'earlier' means nothing. Pre-train with "
                         "model.encoder.causal_mask='none' (full attention).")
      soft_causal = jnp.asarray(0.0 if soft_mask_rate is None else soft_mask_rate, jnp.float32)
    elif soft_mask_rate is not None:
      raise ValueError("soft_mask_rate was given but model.encoder.causal_mask='none'; set causal_mask='soft'.")
    rope = self.rope_table(gh, gw, ids_keep)
    if has_cls:
      cls = self.param('cls_token', _param_init(token_init, (None, None, EMBED)), (1, 1, self.width))
      if cls_pos is not None:
        cls = cls + cls_pos
      parts = [x, jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, self.width))]
      x = jnp.concatenate(parts if cls_last else parts[::-1], axis=1)
    block = block_class(self.remat)
    rates = np.linspace(0.0, self.drop_path, self.depth) if self.depth > 1 else [self.drop_path]
    bad = [i for i in hidden if not 0 <= i < self.depth]
    if bad:
      raise ValueError(f'hidden block indices {bad} are outside this {self.depth}-block encoder (0-based).')
    outputs = {}
    attention = None
    for i in range(self.depth):
      last = cls_attention and i == self.depth - 1
      x = block(self.num_heads, self.mlp_ratio, float(rates[i]), self.dtype, self.attention_impl,
                self.layer_scale, self.norm, self.mlp, self.swiglu_multiple_of, self.qkv_bias,
                'interleaved' if self.rope == '1d' else 'half',
                name=f'blocks_{i}')(x, deterministic, None, last, rope, soft_causal)
      if last:
        x, attention = x
      if i in hidden:
        outputs[i] = x
    tokens = norm_layer(self.norm, self.dtype, 'norm')(x) if self.final_norm else x
    if has_cls:
      cls, patch_tokens = (tokens[:, -1], tokens[:, :-1]) if cls_last else (tokens[:, 0], tokens[:, 1:])
    else:
      cls, patch_tokens = None, tokens
    out = {'tokens': tokens, 'cls': cls, 'patch_tokens': patch_tokens, 'pooled': patch_tokens.mean(axis=1)}
    if hidden:
      out['hidden'] = tuple(outputs[i] for i in hidden)
    if cls_attention:
      out['cls_attention'] = attention
    return out

  def rope_table(self, gh: int, gw: int, ids_keep: jax.Array | None = None) -> jax.Array | None:
    """The rotary table of the encoded tokens (all, or those of ``ids_keep``), or None without RoPE."""
    if self.rope == 'none':
      return None
    head_dim = self.width // self.num_heads
    if self.rope == '2d':
      pos = rope_lib.grid_positions(gh, gw)[None]
      if ids_keep is not None:
        pos = jnp.take_along_axis(pos, ids_keep[..., None], axis=1)
      return rope_lib.rope_2d_table(pos, head_dim, self.resolved_rope_base)
    # '1d': a patch's sequence index is its raster index (after a first CLS token); a CLS token takes the index
    # its place in the full sequence gives it (0 first, num_patches last), whatever subset is kept.
    num_patches = gh * gw
    pos = jnp.arange(num_patches, dtype=jnp.int32)[None] + (self.class_token == 'first')
    if ids_keep is not None:
      pos = jnp.take_along_axis(jnp.broadcast_to(pos, ids_keep.shape[:1] + pos.shape[1:]), ids_keep, axis=1)
    if self.class_token != 'none':
      cls = jnp.full((pos.shape[0], 1), num_patches if self.class_token == 'last' else 0, jnp.int32)
      pos = jnp.concatenate([pos, cls] if self.class_token == 'last' else [cls, pos], axis=1)
    return rope_lib.rope_1d_table(pos, head_dim, self.resolved_rope_base)

  def _learned_pos_table(self, gh: int, gw: int) -> jax.Array:
    rows = 1 + gh * gw
    if self.has_variable('params', 'pos_embed'):
      have = np.shape(nn.meta.unbox(self.get_variable('params', 'pos_embed')))
      if have != (1, rows, self.width):
        raise ValueError(f'the learned position table has shape {have} but {gh}x{gw} patches need '
                         f'(1, {rows}, {self.width}); resize it for this image size with '
                         'mim_jax.interop.pos_embed.resize_pos_embed (or `python -m mim_jax.convert --image-size`).')
    return self.param('pos_embed', _param_init(token_init, (None, None, EMBED)), (1, rows, self.width))


def cls_first_tokens(features: dict[str, jax.Array], class_token: str) -> jax.Array:
  """A ViT's token sequence ``[B, 1 + K, D]`` with the CLS token first, wherever the encoder keeps it
  (``class_token``; for decoders written for MAE's layout)."""
  if class_token == 'first':
    return features['tokens']
  if class_token == 'last':
    return jnp.concatenate([features['cls'][:, None], features['patch_tokens']], axis=1)
  raise ValueError(f"this decoder needs a CLS token, but the encoder has class_token={class_token!r}.")


def dtype_from_name(name: str) -> Dtype:
  try:
    return {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}[name]
  except KeyError:
    raise ValueError(f"compute dtype must be 'float32', 'bfloat16' or 'float16', got {name!r}.") from None

