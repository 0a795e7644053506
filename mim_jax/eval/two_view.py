"""Evaluations of the two-view methods (CropMAE, CroCo) on held-out pairs.

* :func:`held_out_pairs`: pairs made from an eval split by the method's pair transform, with a fixed generator
  (the same pairs for every model compared).
* :func:`reference_losses`: the reconstruction loss of view 1 with its true reference view 2 and with another
  image's view 2 (the batch rolled by one), under the same masks. If the decoder uses the reference, the true one
  must give a clearly lower loss (CropMAE's spec: at least 15% lower; CroCo's: at most 0.8x).
* :func:`single_view_loss`: a one-view method's (MAE's) loss on view 1 under the same masks, the no-reference
  baseline of CroCo's completion claim.
* :func:`patch_correspondence`: frozen patch features of both views of a homography pair; each view-1 patch whose
  centre the homography maps inside view 2 is matched to its nearest view-2 patch (cosine). Scored against the
  exact correspondence: ``exact`` (the true point lies in the matched patch) and ``within1`` (in it or one of its
  8 neighbours), with the chance levels of a uniformly random match.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mim_jax.data import pairs as pairs_lib
from mim_jax.data import pipeline


def held_out_pairs(data_cfg: ml_collections.ConfigDict, pairs_cfg: ml_collections.ConfigDict, num: int,
                   seed: int = 0, split: str | None = None) -> dict[str, np.ndarray]:
  """``num`` pairs from ``split`` (the eval split by default; a seeded stratified sample when capped):
  ``view1``, ``view2`` normalized ``[num, H, W, C]``, ``label``, and ``homography`` for homography pairs."""
  keep = pairs_cfg.kind == 'homography'
  channels = pipeline.dataset_info(data_cfg).image_shape[-1]
  fields = pairs_lib.pair_fields((data_cfg.image_size, data_cfg.image_size, channels), homography=keep)

  def transform(dc, source, train):
    del train
    return pairs_lib.pair_record_transform(pairs_cfg, dc, source, keep_homography=keep)

  return pipeline.eval_arrays(data_cfg, split, num, fields=fields, record_transform=transform, train=True,
                              seed=seed)


def _batches(n: int, size: int):
  for i in range(0, n, size):
    yield slice(i, min(n, i + size))


def reference_losses(method, params, view1: np.ndarray, view2: np.ndarray, seed: int = 0,
                     batch_size: int = 256) -> dict[str, float]:
  """Mean loss of view 1 with its own view 2 (``true``) and with the next pair's (``shuffled``), same masks;
  ``ratio`` = true / shuffled."""
  forward = jax.jit(lambda p, v1, v2, key: method.forward(p, v1, v2, method.masker(key, v1.shape[0]))['loss'])
  other = np.roll(view2, 1, axis=0)
  true, shuffled, weights = [], [], []
  for i, s in enumerate(_batches(len(view1), batch_size)):
    key = jax.random.fold_in(jax.random.key(seed), i)
    true.append(float(forward(params, view1[s], view2[s], key)))
    shuffled.append(float(forward(params, view1[s], other[s], key)))
    weights.append(s.stop - s.start)
  t, u = np.average(true, weights=weights), np.average(shuffled, weights=weights)
  return {'true': float(t), 'shuffled': float(u), 'ratio': float(t / u)}


def single_view_loss(method, params, view1: np.ndarray, seed: int = 0, batch_size: int = 256) -> float:
  """A one-image method's (MAE's) mean loss on ``view1`` under the masks :func:`reference_losses` draws (same
  seed, same generator counts)."""
  forward = jax.jit(lambda p, v, key: method.forward(p, v, method.masker(key, v.shape[0]))['loss'])
  losses, weights = [], []
  for i, s in enumerate(_batches(len(view1), batch_size)):
    losses.append(float(forward(params, view1[s], jax.random.fold_in(jax.random.key(seed), i))))
    weights.append(s.stop - s.start)
  return float(np.average(losses, weights=weights))


def patch_correspondence(method, params, view1: np.ndarray, view2: np.ndarray, homography: np.ndarray,
                         batch_size: int = 256) -> dict[str, float]:
  """Nearest-neighbour patch matching from view 1 to view 2 on frozen patch features, scored against the
  homography (view-1 pixel coordinates -> view-2's, pixel centres at i + 0.5)."""
  h, w = view1.shape[1:3]
  p = method.encoder.patch_size
  gh, gw = h // p, w // p
  feats = jax.jit(lambda prm, x: method.encode(prm, {'image': x})['patch_tokens'].astype(jnp.float32))
  rows, cols = np.divmod(np.arange(gh * gw), gw)
  centres = np.stack([(cols + 0.5) * p, (rows + 0.5) * p], -1)  # (x, y) of each patch centre, raster order
  hits = {'exact': [], 'within1': [], 'chance_exact': [], 'chance_within1': []}
  for s in _batches(len(view1), batch_size):
    f1, f2 = (np.array(feats(params, v[s])) for v in (view1, view2))
    f1 /= np.linalg.norm(f1, axis=-1, keepdims=True) + 1e-12
    f2 /= np.linalg.norm(f2, axis=-1, keepdims=True) + 1e-12
    match = np.argmax(np.einsum('bid,bjd->bij', f1, f2), axis=-1)  # [b, N] the matched view-2 patch
    for b, hmat in enumerate(homography[s]):
      target = pairs_lib.apply_homography(hmat, centres)  # [N, 2] true (x, y) in view 2
      inside = (target[:, 0] >= 0) & (target[:, 0] < w) & (target[:, 1] >= 0) & (target[:, 1] < h)
      if not inside.any():
        continue
      tc, tr = np.floor(target[inside, 0] / p), np.floor(target[inside, 1] / p)  # the true patch
      mr, mc = np.divmod(match[b][inside], gw)
      cheb = np.maximum(np.abs(mr - tr), np.abs(mc - tc))
      hits['exact'].extend(cheb == 0)
      hits['within1'].extend(cheb <= 1)
      # chance: the fraction of view-2 patches that would count, for each scored view-1 patch
      dr = np.abs(rows[None, :] - tr[:, None])
      dc = np.abs(cols[None, :] - tc[:, None])
      near = np.maximum(dr, dc)
      hits['chance_exact'].extend(np.mean(near == 0, axis=1))
      hits['chance_within1'].extend(np.mean(near <= 1, axis=1))
  if not hits['exact']:
    raise ValueError('no view-1 patch maps inside view 2: are these homography pairs?')
  out = {k: float(np.mean(v)) for k, v in hits.items()}
  out['patches'] = len(hits['exact'])
  return out
