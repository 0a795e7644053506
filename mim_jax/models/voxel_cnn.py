"""A 3-D voxel ConvNet with sparse semantics on a dense grid: R-MAE's encoder (the OpenPCDet VoxelBackBone8x
layout of sinatayebati/Radial_MAE ``radial_mae.py``) without a sparse-convolution library.

The official encoder is a spconv network: submanifold convolutions (outputs only at the active voxels), strided
sparse convolutions (an output is active when any input in its window is), BatchNorm1d over the active voxels'
features. Here every op runs densely and is then re-masked to the active set, which gives the same values at the
active voxels (SparK's argument for masked ConvNets) at the cost of computing the empty ones; statistics of the
BatchNorm are taken over the active voxels only (:class:`mim_jax.models.convnets.BatchNorm` with a mask). The
documented deviation: dense compute on a small grid (``[8, 64, 64]``) instead of sparse compute on KITTI's
``[41, 1600, 1408]``.

Layout on a ``[Z, Y, X]`` grid (widths 16, 32, 64, 64, 128 as official):
  conv_input  submanifold 3x3x3, C -> 16
  stage 1     1 submanifold block 16
  stage 2     a strided (2) sparse block 16 -> 32, 2 submanifold blocks
  stage 3     a strided (2) sparse block 32 -> 64, 2 submanifold blocks
  stage 4     a sparse block strided (1, 2, 2) 64 -> 64 (our grid has 8 z-cells, not 41), 2 submanifold blocks
  conv_out    a sparse (3, 1, 1) conv strided (2, 1, 1) -> 128
Each block is conv (no bias), BatchNorm (eps 1e-3, torch momentum 0.01), ReLU. The output ``[B, Z/8, Y/8, X/8,
128]`` is the bird's-eye-view map (z folded into channels): ``feature_map``, ``patch_tokens`` (its cells),
``pooled`` (their mean).

``dims=2`` is the bird's-eye-view variant for small machines (the same stages as 2-D convolutions over ``[Y, X]``
with the z-cells as input channels, PointPillars-style; active = any voxel in the column; ``conv_out`` a 1x1
conv): ~30x less compute than ``dims=3`` on an 8-cell-high grid.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.models.convnets import BatchNorm
from mim_jax.models.encoders import module_fields, register_encoder


def dilate_active(active: jax.Array, kernel: tuple[int, ...], strides: tuple[int, ...],
                  padding: tuple[int, ...]) -> jax.Array:
  """A strided sparse convolution's output sites: active where any input site in the window is (``[B, *spatial]``)."""
  return jax.lax.reduce_window(active.astype(jnp.float32), 0.0, jax.lax.max, (1, *kernel), (1, *strides),
                               [(0, 0), *[(p, p) for p in padding]]) > 0


def _bn(name: str, dtype) -> BatchNorm:
  return BatchNorm(momentum=0.99, epsilon=1e-3, dtype=dtype, name=name)  # torch BatchNorm1d(eps=1e-3, momentum=0.01)


class SparseBlock(nn.Module):
  """conv (no bias) -> BatchNorm over the active sites -> ReLU, zero off the active set; a strided block (``kernel``,
  ``strides``, ``padding`` given) moves to the dilated active set."""

  width: int
  kernel: tuple[int, ...] = (3, 3, 3)
  strides: tuple[int, ...] = (1, 1, 1)
  padding: tuple[int, ...] = (1, 1, 1)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, active: jax.Array, deterministic: bool) -> tuple[jax.Array, jax.Array]:
    if any(s != 1 for s in self.strides) or any(k != 3 for k in self.kernel):
      active = dilate_active(active, self.kernel, self.strides, self.padding)
    y = nn.Conv(self.width, self.kernel, self.strides, [(p, p) for p in self.padding], use_bias=False,
                dtype=self.dtype, param_dtype=jnp.float32, name='conv')(x)
    m = active[..., None]
    y = nn.relu(_bn('bn', self.dtype)(y, deterministic, m))
    return y * m.astype(y.dtype), active


@register_encoder('voxel_cnn')
class VoxelEncoder(nn.Module):
  """See the module docstring. Input ``[B, Z, Y, X]`` or ``[B, Z, Y, X, C]``; ``active`` (bool ``[B, Z, Y, X]``,
  the input voxels; default: the non-zero ones)."""

  widths: tuple[int, ...] = (16, 32, 64, 64)
  out_width: int = 128
  blocks: tuple[int, ...] = (1, 2, 2, 2)  # submanifold blocks per stage after its strided block (stage 1: none)
  dims: int = 3  # 3: the official 3-D layout; 2: bird's-eye view (z-cells as channels)
  dtype: Any = jnp.float32

  @classmethod
  def from_config(cls, cfg, *, dtype=jnp.float32, attention_impl: str | None = None, remat: Any = None,
                  **overrides):
    del attention_impl, remat
    fields = module_fields(cls, cfg, 'voxel_cnn', dtype=dtype, **overrides)
    if len(fields.get('widths', cls.widths)) != 4 or len(fields.get('blocks', cls.blocks)) != 4:
      raise ValueError('voxel_cnn has 4 stages: widths and blocks take 4 values each.')
    if fields.get('dims', cls.dims) not in (2, 3):
      raise ValueError(f"voxel_cnn's dims must be 3 (3-D convolutions) or 2 (bird's-eye view), got {fields['dims']}.")
    return cls(**fields)

  @property
  def downsample(self) -> tuple[int, int, int]:
    return (8, 8, 8)

  @property
  def num_layers(self) -> int:
    return 6

  def layer_id(self, names) -> int:
    for name in names:
      if name == 'conv_input':
        return 0
      if name.startswith('stage') and name[len('stage'):].split('_')[0].isdigit():
        return int(name[len('stage'):].split('_')[0])
      if name == 'conv_out':
        return 5
    return self.num_layers

  def for_finetuning(self, *, drop_path: float, pooled: bool, dtype, remat):
    del drop_path, pooled, remat
    return self.clone(dtype=dtype)

  @nn.compact
  def __call__(self, grid: jax.Array, deterministic: bool = True, active: jax.Array | None = None) -> dict:
    x = grid[..., None] if grid.ndim == 4 else grid
    if x.ndim != 5:
      raise ValueError(f'voxel grids must be [batch, Z, Y, X] or [batch, Z, Y, X, C], got shape {grid.shape}.')
    z, y, w = x.shape[1:4]
    if (self.dims == 3 and z % 8) or y % 8 or w % 8:
      raise ValueError(f'a {z}x{y}x{w} voxel grid does not fit voxel_cnn\'s strides: Y and X (and Z for dims=3) '
                       'must be multiples of 8.')
    if active is None:
      active = jnp.any(x != 0, axis=-1)
    x = x.astype(self.dtype) * active[..., None].astype(self.dtype)
    d = self.dims
    if d == 2:  # bird's-eye view: [B, Y, X, Z * C], a column is active when any of its voxels is
      b, z, y, w, c = x.shape
      x = x.transpose(0, 2, 3, 1, 4).reshape(b, y, w, z * c)
      active = active.any(axis=1)
    three, one = (3,) * d, (1,) * d
    x, active = SparseBlock(self.widths[0], three, one, one, self.dtype, name='conv_input')(x, active, deterministic)
    strides = {2: (2,) * d, 3: (2,) * d, 4: (1, 2, 2) if d == 3 else (2, 2)}
    for s in range(1, 5):
      width = self.widths[s - 1]
      if s > 1:
        x, active = SparseBlock(width, three, strides[s], one, self.dtype, name=f'stage{s}_down')(
            x, active, deterministic)
      for i in range(self.blocks[s - 1]):
        x, active = SparseBlock(width, three, one, one, self.dtype, name=f'stage{s}_{i}')(x, active, deterministic)
    if d == 3:
      x, active = SparseBlock(self.out_width, (3, 1, 1), (2, 1, 1), (1, 0, 0), self.dtype, name='conv_out')(
          x, active, deterministic)
      b, zz, yy, xx, c = x.shape
      bev = x.transpose(0, 2, 3, 1, 4).reshape(b, yy, xx, zz * c)  # z folded into channels
    else:
      x, active = SparseBlock(self.out_width, (1, 1), (1, 1), (0, 0), self.dtype, name='conv_out')(
          x, active, deterministic)
      bev = x
    b, yy, xx, c = bev.shape
    tokens = bev.reshape(b, yy * xx, c)
    return {'cls': None, 'feature_map': bev, 'patch_tokens': tokens,
            'pooled': tokens.astype(jnp.float32).mean(axis=1).astype(tokens.dtype), 'dense': x, 'active': active}
