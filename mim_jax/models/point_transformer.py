"""Point-MAE's encoder on point clouds ``[B, N, 3]`` (``config.model.encoder.name='point_transformer'``).

* Tokens: the cloud is grouped (:mod:`mim_jax.models.point_groups`: ``num_groups`` farthest-point centres, their
  ``group_size`` nearest points relative to the centre) and each group embedded by a mini-PointNet
  (:class:`MiniPointNet`): per point 3 -> 128 (BatchNorm, ReLU) -> 256; the max over the group concatenated before
  each point's feature (512); 512 (BatchNorm, ReLU) -> ``width``; the max over the group. Every group is embedded,
  masked ones included (its BatchNorm statistics count them, as the official code's do).
* Positions: an MLP on each group's centre (3 -> 128, exact GELU, -> ``width``), added before *every* block.
* Blocks: the ViT's pre-norm blocks without a qkv bias, LayerNorm eps 1e-5 (torch's default), drop path rising to
  ``drop_path``; a final LayerNorm. No CLS token.
* ``ids_keep`` ``[B, K]`` (group indices): encode those groups only (Point-MAE's visible groups).

Feature contract: ``patch_tokens`` (one token per group), ``pooled`` = the max plus the mean of the tokens
(Point-M2AE's probe feature; the official Point-MAE has no probe), ``cls`` None; plus ``center`` and
``neighborhood``, which the pre-training objective reads. BatchNorm statistics live in ``batch_stats``.
Official code: Pang-Yatian/Point-MAE ``models/Point_MAE.py`` (``Group``, ``Encoder``, ``MaskTransformer``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.models.convnets import BatchNorm
from mim_jax.models.encoders import module_fields, register_encoder
from mim_jax.models.point_groups import group_points
from mim_jax.models.vit import EMBED, MLP, Block, _param_init, dense, gelu_exact, layer_norm, token_dense

trunc_normal = nn.initializers.truncated_normal(stddev=0.02)


def _dense(features: int, name: str, dtype) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=_param_init(trunc_normal, (None, MLP)),
                  bias_init=_param_init(nn.initializers.zeros, (MLP,)), name=name)


class MiniPointNet(nn.Module):
  """Point-MAE's group embedding (``Encoder``); ``[B, G, K, 3]`` -> ``[B, G, width]``."""

  width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, groups: jax.Array, deterministic: bool) -> jax.Array:
    b, g, k, _ = groups.shape
    x = groups.reshape(b * g, k, 3).astype(self.dtype)
    x = _dense(128, 'conv1', self.dtype)(x)
    x = nn.relu(BatchNorm(dtype=self.dtype, name='bn1')(x, deterministic))
    x = _dense(256, 'conv2', self.dtype)(x)
    pooled = jnp.broadcast_to(x.max(axis=1, keepdims=True), x.shape)
    x = jnp.concatenate([pooled, x], axis=-1)  # the global feature first, as the official concat
    x = _dense(512, 'conv3', self.dtype)(x)
    x = nn.relu(BatchNorm(dtype=self.dtype, name='bn2')(x, deterministic))
    x = _dense(self.width, 'conv4', self.dtype)(x)
    return x.max(axis=1).reshape(b, g, self.width)


class CentreEmbedding(nn.Module):
  """A group centre's position embedding: 3 -> 128, exact GELU, -> ``width``."""

  width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, centers: jax.Array) -> jax.Array:
    x = _dense(128, 'fc1', self.dtype)(centers.astype(self.dtype))
    return _dense(self.width, 'fc2', self.dtype)(gelu_exact(x))


def point_blocks(module: nn.Module, x: jax.Array, pos: jax.Array, depth: int, num_heads: int, mlp_ratio: float,
                 drop_path: float, deterministic: bool, prefix: str = 'blocks',
                 query_ids: jax.Array | None = None) -> jax.Array:
  """Point-MAE's transformer: ``x = block(x + pos)`` for each block (pre-norm ViT blocks, no qkv bias, LayerNorm
  eps 1e-5), inside ``module``'s compact method. ``query_ids``: the last block computes those tokens only."""
  rates = np.linspace(0.0, drop_path, depth) if depth > 1 else [drop_path] * depth
  for i in range(depth):
    last = i == depth - 1
    x = Block(num_heads, mlp_ratio, float(rates[i]), module.dtype, getattr(module, 'attention_impl', 'auto'),
              norm='layernorm_eps1e-5', qkv_bias='none', name=f'{prefix}_{i}')(
                  x + pos, deterministic, query_ids if last else None)
  return x


@register_encoder('point_transformer')
class PointTransformerEncoder(nn.Module):
  """See the module docstring. ``width``, ``depth``, ``num_heads``, ``mlp_ratio``, ``num_groups``, ``group_size``,
  ``drop_path`` (Point-MAE: 384, 12, 6, 4, 64, 32, 0.1)."""

  width: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  num_groups: int = 64
  group_size: int = 32
  drop_path: float = 0.0
  dtype: Any = jnp.float32
  attention_impl: str = 'auto'

  @classmethod
  def from_config(cls, cfg, *, dtype=jnp.float32, attention_impl: str = 'auto', remat: Any = None, **overrides):
    del remat
    return cls(**module_fields(cls, cfg, 'the point transformer', dtype=dtype, attention_impl=attention_impl,
                               **overrides))

  @property
  def num_layers(self) -> int:
    return self.depth + 1

  def layer_id(self, names) -> int:
    for name in names:
      if name in ('group_encoder', 'pos_embed'):
        return 0
      if name.startswith('blocks_') and name[len('blocks_'):].isdigit():
        return int(name[len('blocks_'):]) + 1
    return self.depth + 1

  def for_finetuning(self, *, drop_path: float, pooled: bool, dtype, remat):
    del pooled, remat
    return self.clone(drop_path=float(drop_path), dtype=dtype)

  @nn.compact
  def __call__(self, points: jax.Array, deterministic: bool = True, ids_keep: jax.Array | None = None) -> dict:
    if points.ndim != 3 or points.shape[-1] != 3:
      raise ValueError(f'point clouds must be [batch, points, 3], got shape {points.shape}.')
    neighborhood, center = group_points(points.astype(jnp.float32), self.num_groups, self.group_size)
    tokens = MiniPointNet(self.width, self.dtype, name='group_encoder')(neighborhood, deterministic)
    pos = CentreEmbedding(self.width, self.dtype, name='pos_embed')(center)
    if ids_keep is not None:
      tokens = jnp.take_along_axis(tokens, ids_keep[..., None], axis=1)
      pos = jnp.take_along_axis(pos, ids_keep[..., None], axis=1)
    x = point_blocks(self, tokens, pos, self.depth, self.num_heads, self.mlp_ratio, self.drop_path, deterministic)
    x = layer_norm(self.dtype, 'norm', 1e-5)(x)
    pooled = (x.astype(jnp.float32).max(axis=1) + x.astype(jnp.float32).mean(axis=1)).astype(x.dtype)
    return {'cls': None, 'tokens': x, 'patch_tokens': x, 'pooled': pooled, 'center': center,
            'neighborhood': neighborhood}


__all__ = ['CentreEmbedding', 'MiniPointNet', 'PointTransformerEncoder', 'point_blocks', 'dense', 'token_dense',
           'EMBED']
