"""Reconstruction figures: original | masked | prediction | prediction with the visible patches pasted back."""

from __future__ import annotations

import numpy as np


def _to_display(images: np.ndarray, mean, std) -> np.ndarray:
  x = images * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
  x = np.clip(x, 0.0, 1.0) if x.max() <= 1.5 else np.clip(x / 255.0, 0.0, 1.0)
  return x[..., 0] if x.shape[-1] == 1 else x


def reconstruction_figure(images: np.ndarray, pred_images: np.ndarray, mask_images: np.ndarray, out_png: str, *,
                          mean, std, title: str = '') -> str:
  """Writes a PNG grid, one row per example. ``images``/``pred_images`` are normalized NHWC, ``mask_images``
  is 1 where a pixel's patch was masked. Norm-pix predictions must be de-normalized by the caller."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  images, pred_images, mask_images = (np.asarray(a, np.float32) for a in (images, pred_images, mask_images))
  pasted = images * (1 - mask_images) + pred_images * mask_images
  masked = _to_display(images, mean, std) * (1 - mask_images[..., 0] if images.shape[-1] == 1 else 1 - mask_images)
  columns = [('original', _to_display(images, mean, std)), ('masked', masked),
             ('reconstruction', _to_display(pred_images, mean, std)),
             ('reconstruction + visible', _to_display(pasted, mean, std))]
  n = images.shape[0]
  fig, axes = plt.subplots(n, 4, figsize=(4 * 1.6, n * 1.6), squeeze=False)
  cmap = 'gray' if images.shape[-1] == 1 else None
  for r in range(n):
    for c, (name, arr) in enumerate(columns):
      ax = axes[r, c]
      ax.imshow(arr[r], cmap=cmap, vmin=0, vmax=1, interpolation='nearest')
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(name, fontsize=8)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(out_png, dpi=100)
  plt.close(fig)
  return out_png
