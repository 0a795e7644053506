"""RandAugment for the fine-tune recipes, as PIL ops in the grain pipeline: ``data.augment='rrc_flip_randaug'``.

The MAE / BEiT / DeiT fine-tune setting is timm's ``rand-m9-mstd0.5-inc1``: after RandomResizedCrop + flip,
two ops drawn uniformly (with replacement) from the 15 below, each applied with probability 0.5 at a
magnitude drawn per use from ``N(9, 0.5)`` clipped to [0, 10] (of 10); the "increasing" variants make a larger
magnitude always a stronger change. Geometric ops fill with the ImageNet mean colour and resample bicubically.

  AutoContrast, Equalize, Invert, Rotate (up to +-30 deg), Posterize (4 - 4m/10 bits), Solarize (threshold
  256 - 256m/10), SolarizeAdd (+110m/10 below 128), Color / Contrast / Brightness / Sharpness (factor
  1 +- 0.9m/10), ShearX / ShearY (+-0.3m/10), TranslateX / TranslateY (+-0.45m/10 of the size).

Written from the RandAugment paper (Cubuk et al. 2020) and timm's documented parameterisation. Importing this
module registers the recipe with :mod:`mim_jax.data.transforms`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from mim_jax.data import transforms

MAX_LEVEL = 10.0
FILL_RGB = (124, 116, 104)  # ImageNet mean x 255


def _fill(img: Image.Image):
  return int(round(0.299 * FILL_RGB[0] + 0.587 * FILL_RGB[1] + 0.114 * FILL_RGB[2])) if img.mode == 'L' else FILL_RGB


def _signed(value: float, rng: np.random.Generator) -> float:
  return -value if rng.random() < 0.5 else value


def _affine(img, matrix):
  return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=Image.Resampling.BICUBIC,
                       fillcolor=_fill(img))


def _enhance(enhancer):
  def op(img, m, rng):
    return enhancer(img).enhance(1.0 + _signed(m / MAX_LEVEL * 0.9, rng))
  return op


def _solarize_add(img, m, rng):
  del rng
  add = int(m / MAX_LEVEL * 110)
  lut = [min(255, i + add) if i < 128 else i for i in range(256)]
  return img.point(lut * (len(img.getbands())))


OPS = {
  'AutoContrast': lambda img, m, rng: ImageOps.autocontrast(img),
  'Equalize': lambda img, m, rng: ImageOps.equalize(img),
  'Invert': lambda img, m, rng: ImageOps.invert(img),
  'Rotate': lambda img, m, rng: img.rotate(_signed(m / MAX_LEVEL * 30.0, rng), resample=Image.Resampling.BICUBIC,
                                           fillcolor=_fill(img)),
  'PosterizeIncreasing': lambda img, m, rng: ImageOps.posterize(img, max(0, 4 - int(m / MAX_LEVEL * 4))),
  'SolarizeIncreasing': lambda img, m, rng: ImageOps.solarize(img, 256 - int(m / MAX_LEVEL * 256)),
  'SolarizeAdd': _solarize_add,
  'ColorIncreasing': _enhance(ImageEnhance.Color),
  'ContrastIncreasing': _enhance(ImageEnhance.Contrast),
  'BrightnessIncreasing': _enhance(ImageEnhance.Brightness),
  'SharpnessIncreasing': _enhance(ImageEnhance.Sharpness),
  'ShearX': lambda img, m, rng: _affine(img, (1, _signed(m / MAX_LEVEL * 0.3, rng), 0, 0, 1, 0)),
  'ShearY': lambda img, m, rng: _affine(img, (1, 0, 0, _signed(m / MAX_LEVEL * 0.3, rng), 1, 0)),
  'TranslateXRel': lambda img, m, rng: _affine(img, (1, 0, _signed(m / MAX_LEVEL * 0.45, rng) * img.size[0], 0, 1,
                                                     0)),
  'TranslateYRel': lambda img, m, rng: _affine(img, (1, 0, 0, 0, 1, _signed(m / MAX_LEVEL * 0.45, rng) *
                                                     img.size[1])),
}


class RandAugment:
  """``num_ops`` ops per image, each with probability ``prob`` at magnitude ~ N(magnitude, magnitude_std)."""

  def __init__(self, num_ops: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.5, prob: float = 0.5,
               ops: tuple[str, ...] = tuple(OPS)):
    unknown = sorted(set(ops) - set(OPS))
    if unknown:
      raise ValueError(f'unknown RandAugment ops {unknown}; known: {sorted(OPS)}')
    self.num_ops, self.magnitude, self.magnitude_std, self.prob = int(num_ops), magnitude, magnitude_std, prob
    self.ops = tuple(ops)

  def __call__(self, img, rng: np.random.Generator) -> Image.Image:
    img = transforms.as_pil(img)
    for name in rng.choice(self.ops, self.num_ops, replace=True):
      if rng.random() > self.prob:
        continue
      m = self.magnitude if self.magnitude_std <= 0 else rng.normal(self.magnitude, self.magnitude_std)
      img = OPS[str(name)](img, float(np.clip(m, 0.0, MAX_LEVEL)), rng)
    return img


@transforms.register_augment('rrc_flip_randaug')
def rrc_flip_randaug(cfg) -> list:
  """Fine-tune train transform: RandomResizedCrop + optional flip (the 'rrc_flip' recipe), then RandAugment
  rand-m9-mstd0.5-inc1."""
  return [*transforms.AUGMENTS['rrc_flip'](cfg), RandAugment()]
