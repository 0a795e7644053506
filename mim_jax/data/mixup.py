"""Mixup / CutMix with label smoothing as jit-able batch ops (the fine-tune recipe of DeiT / BEiT / MAE).

Semantics of timm's ``Mixup(mode='batch')``, which the MAE fine-tune script uses with ``mixup_alpha=0.8``,
``cutmix_alpha=1.0``, ``prob=1.0``, ``switch_prob=0.5``, ``label_smoothing=0.1``:

* once per batch: with probability ``prob`` mix at all; if so, CutMix with probability ``switch_prob`` (when
  both alphas are > 0), else Mixup; ``lam ~ Beta(alpha, alpha)`` of the chosen op;
* every example is mixed with the example at the mirrored position of the batch (``x[::-1]``);
* Mixup: ``x = lam * x + (1 - lam) * x[::-1]``;
* CutMix: a box of side ``int(H * sqrt(1 - lam))`` x ``int(W * sqrt(1 - lam))`` centred at a uniform random
  pixel (clipped at the border) is pasted from ``x[::-1]``; ``lam`` becomes the visible fraction
  ``1 - box_area / (H * W)``;
* targets: label-smoothed one-hot ``y = (1 - s + s / C)`` on the class and ``s / C`` elsewhere, mixed the same
  way, ``lam * y + (1 - lam) * y[::-1]``.

Everything has static shapes (both ops are computed and one is selected), so a train step jits once.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class MixupConfig:
  mixup_alpha: float = 0.8
  cutmix_alpha: float = 1.0
  prob: float = 1.0  # probability of mixing a batch at all
  switch_prob: float = 0.5  # probability of CutMix instead of Mixup when both are enabled
  label_smoothing: float = 0.1

  def __post_init__(self):
    if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
      raise ValueError(f'mixup_alpha and cutmix_alpha must be >= 0, got {self.mixup_alpha}, {self.cutmix_alpha}.')
    for name in ('prob', 'switch_prob', 'label_smoothing'):
      value = getattr(self, name)
      if not 0.0 <= value <= 1.0:
        raise ValueError(f'mixup.{name} must be in [0, 1], got {value}.')

  @property
  def enabled(self) -> bool:
    return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


def smooth_one_hot(labels: jax.Array, num_classes: int, smoothing: float = 0.0) -> jax.Array:
  """``[B] int -> [B, C]``: ``1 - smoothing + smoothing / C`` on the label, ``smoothing / C`` elsewhere."""
  off = smoothing / num_classes
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * (1.0 - smoothing) + off


def cutmix_box(rng: jax.Array, lam: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
  """``(box mask [H, W] bool, corrected lam)``: the box covers about ``1 - lam`` of the image."""
  cut_rat = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * cut_rat).astype(jnp.int32)
  cut_w = jnp.floor(width * cut_rat).astype(jnp.int32)
  ky, kx = jax.random.split(rng)
  cy = jax.random.randint(ky, (), 0, height)
  cx = jax.random.randint(kx, (), 0, width)
  y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
  corrected = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (height * width)
  return box, corrected


def mix_batch(rng: jax.Array, images: jax.Array, labels: jax.Array, num_classes: int,
              cfg: MixupConfig = MixupConfig()) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """``(images [B, H, W, C] or clips [B, T, H, W, C], int labels [B]) -> (mixed images, soft targets [B,
  num_classes], info)``.

  ``info`` holds the batch's ``lam`` and whether CutMix was used (for logging and tests).
  """
  targets = smooth_one_hot(labels, num_classes, cfg.label_smoothing)
  if not cfg.enabled:
    return images, targets, {'lam': jnp.ones([], jnp.float32), 'cutmix': jnp.zeros([], bool)}
  k_apply, k_switch, k_mix, k_cut, k_box = jax.random.split(rng, 5)
  if cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(k_switch) < cfg.switch_prob
  else:
    use_cutmix = jnp.asarray(cfg.cutmix_alpha > 0)
  lam_mixup = jax.random.beta(k_mix, cfg.mixup_alpha, cfg.mixup_alpha) if cfg.mixup_alpha > 0 else 1.0
  lam_cutmix = jax.random.beta(k_cut, cfg.cutmix_alpha, cfg.cutmix_alpha) if cfg.cutmix_alpha > 0 else 1.0
  apply = jax.random.uniform(k_apply) < cfg.prob
  h, w = images.shape[-3:-1]
  box, lam_box = cutmix_box(k_box, jnp.asarray(lam_cutmix, jnp.float32), h, w)

  partner = images[::-1]
  mixed_images = jnp.asarray(lam_mixup, images.dtype) * images + jnp.asarray(1 - lam_mixup, images.dtype) * partner
  # [B, H, W, C] images, or [B, T, H, W, C] clips: one box for every frame (timm's CutMix on a clip tensor).
  cut_images = jnp.where(box.reshape((1,) * (images.ndim - 3) + (h, w, 1)), partner, images)
  lam = jnp.where(use_cutmix, lam_box, jnp.asarray(lam_mixup, jnp.float32))
  lam = jnp.where(apply, lam, 1.0)
  out = jnp.where(apply, jnp.where(use_cutmix, cut_images, mixed_images), images)
  mixed_targets = lam * targets + (1.0 - lam) * targets[::-1]
  return out, mixed_targets, {'lam': lam, 'cutmix': apply & use_cutmix}


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean over the batch of ``-sum(targets * log_softmax(logits))`` (timm's SoftTargetCrossEntropy)."""
  return -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), axis=-1).mean()
