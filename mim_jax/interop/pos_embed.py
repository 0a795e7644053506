"""Position tables across formats: recognising the fixed sin-cos table, and resizing a table to a new grid.

All formats here store the table with its CLS row, ``[1, 1 + gh * gw, D]``, patches in row-major order. MAE's
table has a zero CLS row and the sin-cos rows of :func:`mim_jax.models.vit.sincos_2d_table`.

Resizing (fine-tuning at 384 or 448 after pre-training at 224) follows the MAE fine-tuning recipe: the patch rows,
seen as a ``D``-channel ``gh x gw`` image, are resampled bicubically (cubic convolution with a = -0.75, half-pixel
centres, edge samples repeated: ``torch.nn.functional.interpolate(mode='bicubic', align_corners=False)``), and the
CLS row is kept. timm's own resampling uses ``antialias=True``, which weights differently (a = -0.5); checkpoints
resized by timm and by MAE therefore differ slightly, and both are legitimate starting points for fine-tuning.
"""

from __future__ import annotations

import numpy as np

from mim_jax.models.vit import sincos_2d_table

SINCOS_TOLERANCE = 1e-5


def sincos_with_cls(width: int, grid: tuple[int, int]) -> np.ndarray:
  """MAE's table as the PyTorch formats store it: ``[1, 1 + N, D]`` with a zero CLS row."""
  table = sincos_2d_table(width, *grid)
  return np.concatenate([np.zeros((1, width), np.float32), table], axis=0)[None]


def is_sincos(table: np.ndarray, grid: tuple[int, int], tolerance: float = SINCOS_TOLERANCE) -> bool:
  """True when ``table`` ([1, 1+N, D]) is MAE's fixed table for ``grid`` (to float32 rounding)."""
  table = np.asarray(table)
  width = table.shape[-1]
  if width % 4 or table.shape != (1, 1 + grid[0] * grid[1], width):
    return False
  return float(np.max(np.abs(table - sincos_with_cls(width, grid)))) <= tolerance


def square_grid(num_patches: int, what: str) -> tuple[int, int]:
  side = int(round(num_patches ** 0.5))
  if side * side != num_patches:
    raise ValueError(f'{what} has {num_patches} patch rows, which is not a square grid; give the image size '
                     '(--image-size HxW) so the grid is known.')
  return side, side


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  """Keys cubic-convolution weights for the 4 taps at offsets -1, 0, 1, 2 from floor(x); t = x - floor(x)."""
  d = np.stack([t + 1, t, 1 - t, 2 - t], axis=-1)
  near = ((a + 2) * d - (a + 3)) * d * d + 1
  far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
  return np.where(d <= 1, near, far)


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """``[n_out, n_in]`` resampling matrix (align_corners=False, edge-clamped taps)."""
  x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
  base = np.floor(x)
  weights = _cubic_weights(x - base)
  out = np.zeros((n_out, n_in), np.float64)
  for tap in range(4):
    idx = np.clip(base.astype(np.int64) - 1 + tap, 0, n_in - 1)
    np.add.at(out, (np.arange(n_out), idx), weights[:, tap])
  return out


def resize_pos_embed(table: np.ndarray, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> np.ndarray:
  """``[1, 1 + old N, D]`` -> ``[1, 1 + new N, D]``: bicubic on the patch rows, the CLS row kept."""
  table = np.asarray(table, np.float32)
  (oh, ow), (nh, nw) = tuple(old_grid), tuple(new_grid)
  if table.ndim != 3 or table.shape[:2] != (1, 1 + oh * ow):
    raise ValueError(f'a position table for a {oh}x{ow} grid has shape (1, {1 + oh * ow}, D); got {table.shape}.')
  if (oh, ow) == (nh, nw):
    return table
  patches = table[0, 1:].reshape(oh, ow, -1).astype(np.float64)
  resized = np.einsum('ph,hwd,qw->pqd', bicubic_matrix(oh, nh), patches, bicubic_matrix(ow, nw))
  return np.concatenate([table[:, :1], resized.reshape(1, nh * nw, -1).astype(np.float32)], axis=1)
