"""MultiMAE's modules (official EPFL-VILAB/MultiMAE ``multimae/``): input adapters, the multi-modal encoder and the
cross-attention output adapter.

* **Input adapters** (``input_adapters.py``): a dense modality (RGB, depth) is cut into ``p x p`` patches by a
  strided convolution; semantic maps (given at ``1/stride`` of the image size, as the official code reads them at
  stride 4) go through a learned class embedding (64 wide) and a ``p/stride`` strided convolution. Each adds the
  fixed 2-D sin-cos table of MoCo v3 (the row index in the first half). No per-modality embedding on the input.
* **Encoder** (``MultiMAE``): the visible tokens of all modalities, concatenated in modality order and gathered by
  ``ids_keep``, then the learned global token(s) **appended**, then pre-norm ViT blocks (LayerNorm eps 1e-6), and
  **no final norm**. Registered as the encoder ``'multivit'``: its feature contract reads RGB alone (the paper's
  transfer protocol): ``patch_tokens`` the RGB tokens, ``cls`` the global token, ``pooled`` the mean of the patch
  tokens.
* **Output adapter** (``SpatialOutputAdapter``): the encoder's tokens projected to the decoder width; a context of
  those tokens plus, per token, its modality's learned embedding and the decoder's own sin-cos position; queries =
  this adapter's modality's rows of the full (mask-token-filled) sequence; one cross-attention from the LayerNormed
  queries to the LayerNormed context (**no residual** around it), an MLP with a residual, ``depth`` ViT blocks, a
  linear layer to ``C x ph x pw`` per token (channels first within a patch).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.models.encoders import module_fields, register_encoder
from mim_jax.models.vit import Block, _param_init, gelu_exact, layer_norm, sincos_2d_table

trunc_normal = nn.initializers.truncated_normal(stddev=0.02)
DENSE_MODALITIES = {'rgb': 3, 'depth': 1}  # modality -> channels
SEMSEG = 'semseg'


def _linear(features: int, name: str, dtype, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=nn.initializers.xavier_uniform(), name=name)


def sincos_table(width: int, grid: tuple[int, int]) -> jax.Array:
  """MoCo v3's table as MultiMAE builds it (``meshgrid`` in 'ij' order: the row index in the first half)."""
  return jnp.asarray(sincos_2d_table(width, grid[0], grid[1], rows_first=True))[None]


class PatchAdapter(nn.Module):
  """A dense modality ``[B, H, W, C]`` -> ``[B, (H/p)(W/p), width]`` tokens with positions."""

  width: int
  patch: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.patch
    y = nn.Conv(self.width, (p, p), (p, p), padding='VALID', dtype=self.dtype, param_dtype=jnp.float32,
                name='proj')(x.astype(self.dtype))
    b, gh, gw, d = y.shape
    return y.reshape(b, gh * gw, d) + sincos_table(d, (gh, gw)).astype(y.dtype)


class SemSegAdapter(nn.Module):
  """Class ids ``[B, H/s, W/s]`` -> tokens: a class embedding (``class_dim`` wide), a ``(p/s)``-strided
  convolution, positions."""

  width: int
  patch: int  # on the semantic map: the image patch size / the stride
  num_classes: int
  class_dim: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array) -> jax.Array:
    emb = nn.Embed(self.num_classes, self.class_dim, embedding_init=trunc_normal, param_dtype=jnp.float32,
                   name='class_emb')(ids.astype(jnp.int32)).astype(self.dtype)
    p = self.patch
    y = nn.Conv(self.width, (p, p), (p, p), padding='VALID', dtype=self.dtype, param_dtype=jnp.float32,
                name='proj')(emb)
    b, gh, gw, d = y.shape
    return y.reshape(b, gh * gw, d) + sincos_table(d, (gh, gw)).astype(y.dtype)


@register_encoder('multivit')
class MultiViTEncoder(nn.Module):
  """See the module docstring. ``modalities``: the input modalities in token order ('rgb', 'depth', 'semseg')."""

  modalities: tuple[str, ...] = ('rgb', 'depth', 'semseg')
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  num_global_tokens: int = 1
  semseg_classes: int = 133
  semseg_stride: int = 4
  class_dim: int = 64
  drop_path: float = 0.0
  dtype: Any = jnp.float32
  attention_impl: str = 'auto'

  @classmethod
  def from_config(cls, cfg, *, dtype=jnp.float32, attention_impl: str = 'auto', remat: Any = None, **overrides):
    del remat
    fields = module_fields(cls, cfg, 'multivit', dtype=dtype, attention_impl=attention_impl, **overrides)
    bad = [m for m in fields.get('modalities', cls.modalities) if m not in (*DENSE_MODALITIES, SEMSEG)]
    if bad:
      raise ValueError(f'multivit modalities must be among {[*DENSE_MODALITIES, SEMSEG]}, got {bad}.')
    if 'rgb' not in fields.get('modalities', cls.modalities):
      raise ValueError("multivit needs the 'rgb' modality (its features read RGB alone).")
    return cls(**fields)

  def setup(self):
    adapters = {}
    for m in self.modalities:
      if m == SEMSEG:
        adapters[m] = SemSegAdapter(self.width, self.patch_size // self.semseg_stride, self.semseg_classes,
                                    self.class_dim, self.dtype, name=f'{m}_adapter')
      else:
        adapters[m] = PatchAdapter(self.width, self.patch_size, self.dtype, name=f'{m}_adapter')
    self.adapters = adapters
    self.global_tokens = self.param('global_tokens', _param_init(trunc_normal, (None, None, None)),
                                    (1, self.num_global_tokens, self.width), jnp.float32)
    dpr = np.linspace(0.0, self.drop_path, self.depth)
    self.blocks = [Block(self.num_heads, self.mlp_ratio, float(dpr[i]), self.dtype, self.attention_impl,
                         name=f'blocks_{i}') for i in range(self.depth)]

  @property
  def num_layers(self) -> int:
    return self.depth + 1

  def layer_id(self, names) -> int:
    for name in names:
      if name.endswith('_adapter') or name == 'global_tokens':
        return 0
      if name.startswith('blocks_') and name[len('blocks_'):].isdigit():
        return int(name[len('blocks_'):]) + 1
    return self.depth + 1

  def for_finetuning(self, *, drop_path: float, pooled: bool, dtype, remat):
    del pooled, remat
    return self.clone(drop_path=float(drop_path), dtype=dtype)

  def embed(self, inputs: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Each modality's tokens ``[B, N_m, width]`` (with positions), in ``modalities`` order."""
    return {m: self.adapters[m](inputs[m]) for m in self.modalities if m in inputs}

  def encode_visible(self, inputs: dict[str, jax.Array], ids_keep: jax.Array | None,
                     deterministic: bool = True) -> jax.Array:
    """``[B, K + G, width]``: the tokens at ``ids_keep`` of the concatenated modalities (all when None), then the
    global tokens, through the blocks."""
    tokens = jnp.concatenate(list(self.embed(inputs).values()), axis=1)
    if ids_keep is not None:
      tokens = jnp.take_along_axis(tokens, ids_keep[..., None], axis=1)
    b = tokens.shape[0]
    g = jnp.broadcast_to(self.global_tokens.astype(tokens.dtype), (b, self.num_global_tokens, self.width))
    x = jnp.concatenate([tokens, g], axis=1)
    for block in self.blocks:
      x = block(x, deterministic)
    return x

  def __call__(self, images: jax.Array, deterministic: bool = True) -> dict:
    """RGB alone (the transfer protocol): the feature contract."""
    x = self.encode_visible({'rgb': images}, None, deterministic)
    n = x.shape[1] - self.num_global_tokens
    patch = x[:, :n]
    return {'cls': x[:, n], 'patch_tokens': patch, 'tokens': x,
            'pooled': patch.astype(jnp.float32).mean(axis=1).astype(patch.dtype)}


class CrossAttention(nn.Module):
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    b, n, d = x.shape
    hd = d // self.num_heads
    q = _linear(d, 'q', self.dtype)(x).reshape(b, n, self.num_heads, hd)
    kv = _linear(2 * d, 'kv', self.dtype)(context).reshape(b, context.shape[1], 2, self.num_heads, hd)
    k, v = kv[:, :, 0], kv[:, :, 1]
    logits = jnp.einsum('bqhd,bkhd->bhqk', q * (hd ** -0.5), k, preferred_element_type=jnp.float32)
    w = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', w, v).reshape(b, n, d)
    return _linear(d, 'proj', self.dtype)(out)


class SpatialOutputAdapter(nn.Module):
  """See the module docstring. ``task``: this adapter's modality; ``context_tasks``: the encoder's modalities in
  token order; ``channels``: outputs per pixel; ``patch``: output pixels per token side (the image patch size over
  the modality's stride)."""

  task: str
  context_tasks: tuple[str, ...]
  channels: int
  patch: int
  width: int = 256
  depth: int = 2
  num_heads: int = 8
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  attention_impl: str = 'auto'

  @nn.compact
  def __call__(self, encoder_tokens: jax.Array, ids_keep: jax.Array, ids_restore: jax.Array,
               tokens_per_task: tuple[int, ...], grid: tuple[int, int], num_global: int,
               deterministic: bool = True) -> jax.Array:
    """``[B, gh * patch, gw * patch, channels]``: this modality's prediction."""
    d = self.width
    ctx = _linear(d, 'proj_context', self.dtype)(encoder_tokens)
    b = ctx.shape[0]
    visible, global_tokens = ctx[:, :-num_global], ctx[:, -num_global:]
    total = int(sum(tokens_per_task))
    mask_token = self.param('mask_token', _param_init(nn.initializers.zeros, (None, None, None)), (1, 1, d),
                            jnp.float32).astype(ctx.dtype)
    full = jnp.concatenate([visible, jnp.broadcast_to(mask_token, (b, total - visible.shape[1], d))], axis=1)
    full = jnp.take_along_axis(full, ids_restore[..., None], axis=1)  # unshuffled: modality order
    pos = sincos_table(d, grid).astype(ctx.dtype)
    emb = []
    for task, n in zip(self.context_tasks, tokens_per_task):
      t = self.param(f'task_emb_{task}', _param_init(trunc_normal, (None, None, None)), (1, 1, d), jnp.float32)
      emb.append(jnp.broadcast_to(t.astype(ctx.dtype) + pos, (b, n, d)))
    full = full + jnp.concatenate(emb, axis=1)
    if self.task in self.context_tasks:  # queries: this modality's rows (visible tokens keep their content)
      start = int(sum(tokens_per_task[:self.context_tasks.index(self.task)]))
      queries = full[:, start:start + tokens_per_task[self.context_tasks.index(self.task)]]
    else:  # a modality the encoder did not read: mask tokens at the positions (it has no task embedding)
      queries = jnp.broadcast_to(mask_token + pos, (b, grid[0] * grid[1], d))
    context = jnp.concatenate([jnp.take_along_axis(full, ids_keep[..., None], axis=1), global_tokens], axis=1)
    x = CrossAttention(self.num_heads, self.dtype, name='decoder')(layer_norm(self.dtype, 'query_norm')(queries),
                                                                   layer_norm(self.dtype, 'context_norm')(context))
    h = _linear(int(d * self.mlp_ratio), 'mlp_fc1', self.dtype)(layer_norm(self.dtype, 'out_norm')(x))
    x = x + _linear(d, 'mlp_fc2', self.dtype)(gelu_exact(h))
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_ratio, 0.0, self.dtype, self.attention_impl, name=f'blocks_{i}')(
          x, deterministic)
    x = _linear(self.channels * self.patch ** 2, 'out_proj', self.dtype)(x)
    gh, gw, p, c = grid[0], grid[1], self.patch, self.channels
    x = x.reshape(b, gh, gw, c, p, p)  # (c ph pw) per token, channels first as the official rearrange
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, gh * p, gw * p, c)
