"""Pixel targets: patchify / unpatchify in the MAE reference order, per-patch normalized pixels."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
  """``[B, H, W, C]`` -> ``[B, (H/p)*(W/p), p*p*C]``: tokens in row-major order, each patch as (p, q, c)."""
  b, h, w, c = images.shape
  p = patch_size
  if h % p or w % p:
    raise ValueError(f'image size {h}x{w} is not divisible by the patch size {p}.')
  x = images.reshape(b, h // p, p, w // p, p, c)
  x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def patchify_video(clips: jax.Array, tubelet: int, patch_size: int) -> jax.Array:
  """``[B, T, H, W, C]`` -> ``[B, (T/t)*(H/p)*(W/p), t*p*p*C]``: tubelets in time-major order (a Conv3d tubelet
  embedding's flattened output order), each as (frame, row, column, channel), channel fastest (VideoMAE's
  ``b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2 c)``)."""
  b, t, h, w, c = clips.shape
  p = patch_size
  if t % tubelet or h % p or w % p:
    raise ValueError(f'a clip of {t} frames of {h}x{w} is not a whole number of {tubelet}x{p}x{p} tubelets.')
  x = clips.reshape(b, t // tubelet, tubelet, h // p, p, w // p, p, c)
  x = jnp.transpose(x, (0, 1, 3, 5, 2, 4, 6, 7))
  return x.reshape(b, (t // tubelet) * (h // p) * (w // p), tubelet * p * p * c)


def unpatchify_video(tokens: jax.Array, tubelet: int, patch_size: int, clip_shape: tuple[int, ...]) -> jax.Array:
  """Inverse of :func:`patchify_video`: ``[B, N, t*p*p*C]`` -> ``[B, T, H, W, C]`` (``clip_shape`` = (T, H, W, C))."""
  t, h, w, c = clip_shape
  p = patch_size
  x = tokens.reshape(tokens.shape[0], t // tubelet, h // p, w // p, tubelet, p, p, c)
  return jnp.transpose(x, (0, 1, 4, 2, 5, 3, 6, 7)).reshape(tokens.shape[0], t, h, w, c)


def normalize_tubelets(patches: jax.Array, channels: int, eps: float = 1e-6) -> jax.Array:
  """VideoMAE's target: each tubelet normalized per channel over its pixels (mean, unbiased std, ``+ eps`` on the
  std, not under the root as MAE's); ``patches`` ``[..., t*p*p*C]`` with the channel fastest."""
  x = patches.reshape(*patches.shape[:-1], -1, channels)
  mean = x.mean(axis=-2, keepdims=True)
  std = jnp.sqrt(x.var(axis=-2, keepdims=True, ddof=1))
  return ((x - mean) / (std + eps)).reshape(patches.shape)


def unpatchify(patches: jax.Array, patch_size: int, grid_hw: tuple[int, int], channels: int) -> jax.Array:
  """Inverse of :func:`patchify`."""
  b = patches.shape[0]
  gh, gw = grid_hw
  p = patch_size
  if patches.shape[1:] != (gh * gw, p * p * channels):
    raise ValueError(f'patches of shape {patches.shape} do not match a {gh}x{gw} grid of '
                     f'{p}x{p}x{channels} patches.')
  x = patches.reshape(b, gh, gw, p, p, channels)
  x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
  return x.reshape(b, gh * p, gw * p, channels)


def normalize_patches(patches: jax.Array, eps: float = 1e-6) -> jax.Array:
  """MAE's ``norm_pix_loss`` target: per patch, subtract the mean and divide by sqrt(unbiased var + eps)."""
  mean = patches.mean(axis=-1, keepdims=True)
  var = patches.var(axis=-1, keepdims=True, ddof=1)
  return (patches - mean) / jnp.sqrt(var + eps)


def pixel_target(images: jax.Array, patch_size: int, norm_pix: bool) -> jax.Array:
  target = patchify(images.astype(jnp.float32), patch_size)
  return normalize_patches(target) if norm_pix else target


def denormalize_prediction(pred: jax.Array, images: jax.Array, patch_size: int) -> jax.Array:
  """Maps a norm-pix prediction back to pixel space with each patch's own mean/std (for figures)."""
  target = patchify(images.astype(jnp.float32), patch_size)
  mean = target.mean(axis=-1, keepdims=True)
  std = jnp.sqrt(target.var(axis=-1, keepdims=True, ddof=1) + 1e-6)
  return pred * std + mean


def reconstruction_images(pred: jax.Array, mask: jax.Array, images: jax.Array, patch_size: int,
                          grid_hw: tuple[int, int], norm_pix: bool) -> dict[str, jax.Array]:
  """Per-patch predictions ``[B, N, p*p*C]`` and the token mask ``[B, N]`` as images for figures: ``pred_images``
  (de-normalized with each target patch's statistics when the target was norm-pix) and ``mask_images``."""
  pred = pred.astype(jnp.float32)
  if norm_pix:
    pred = denormalize_prediction(pred, images, patch_size)
  c = images.shape[-1]
  mask_patches = jnp.repeat(mask[..., None], patch_size * patch_size * c, axis=-1)
  return {'pred_images': unpatchify(pred, patch_size, grid_hw, c),
          'mask_images': unpatchify(mask_patches, patch_size, grid_hw, c)}
