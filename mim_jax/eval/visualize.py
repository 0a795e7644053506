"""Reconstruction figures: original | masked | prediction | prediction with the visible patches pasted back."""

from __future__ import annotations

import numpy as np


def _pixel_range(images: np.ndarray, mean, std) -> float:
  """1.0 if the dataset's mean/std map to [0, 1] pixels, 255.0 if they map to [0, 255] (decided on the originals,
  never on predictions, whose unsupervised visible patches can be far out of range)."""
  x = images * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
  return 1.0 if x.max() <= 1.5 else 255.0


def _to_display(images: np.ndarray, mean, std, pixel_range: float) -> np.ndarray:
  x = images * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
  x = np.clip(x / pixel_range, 0.0, 1.0)
  return x[..., 0] if x.shape[-1] == 1 else x


def reconstruction_figure(images: np.ndarray, pred_images: np.ndarray, mask_images: np.ndarray, out_png: str, *,
                          mean, std, title: str = '', reference: np.ndarray | None = None) -> str:
  """Writes a PNG grid, one row per example. ``images``/``pred_images`` are normalized NHWC, ``mask_images``
  is 1 where a pixel's patch was masked. Norm-pix predictions must be de-normalized by the caller.
  ``reference``: the second view a two-view method reconstructs from (a first column; ``images`` are view 1)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  images, pred_images, mask_images = (np.asarray(a, np.float32) for a in (images, pred_images, mask_images))
  pasted = images * (1 - mask_images) + pred_images * mask_images
  r = _pixel_range(images, mean, std)
  show = lambda x: _to_display(x, mean, std, r)
  m = mask_images[..., 0] if images.shape[-1] == 1 else mask_images
  masked = show(images) * (1 - m) + 0.5 * m  # hidden patches in mid-gray, so black backgrounds stay readable
  columns = [('original', show(images)), ('masked', masked), ('reconstruction', show(pred_images)),
             ('reconstruction + visible', show(pasted))]
  if reference is not None:
    columns = [('view 2 (reference)', show(np.asarray(reference, np.float32))), ('view 1', columns[0][1]),
               *columns[1:]]
  n = images.shape[0]
  fig, axes = plt.subplots(n, len(columns), figsize=(len(columns) * 1.6, n * 1.6), squeeze=False)
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
