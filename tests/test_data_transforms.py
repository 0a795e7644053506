"""Transforms: reduced-size JPEG decoding agrees with full decoding, eval crop geometry, registry, normalize."""

import io

import numpy as np
import pytest
from PIL import Image

from mim_jax.data import pipeline, sample_images, transforms


@pytest.fixture(scope='module')
def big_jpeg():
  photo = sample_images.random_photo(sample_images.source_photos(), np.random.default_rng(0), size=(800, 600))
  return sample_images.jpeg_bytes(photo, 92)


def _decoders():
  out = ['pil_full', 'pil']
  if transforms.resolve_decoder('auto') == 'simplejpeg':
    out += ['simplejpeg', 'simplejpeg_fast']
  return out


@pytest.mark.parametrize('out_size', [64, 160])
def test_reduced_size_decoding_matches_full_decoding(big_jpeg, out_size):
  box = (100.0, 50.0, 700.0, 560.0)  # 600x510 box: 1/8..1/2 DCT scales apply at these output sizes
  results = {}
  for dec in _decoders():
    img = transforms.LazyImage(big_jpeg, 'RGB', dec).crop_resize(box, (out_size, out_size),
                                                                 Image.Resampling.BICUBIC)
    assert img.size == (out_size, out_size) and img.mode == 'RGB'
    results[dec] = np.asarray(img, np.float32)
  for dec, arr in results.items():
    diff = np.abs(arr - results['pil_full']).mean()
    assert diff < 3.0, (dec, diff)  # same content and geometry; only the low-pass differs slightly


def test_grayscale_pipeline_and_non_jpeg_inputs():
  rgb = np.zeros((40, 60, 3), np.uint8)
  rgb[..., 0] = 255
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format='PNG')
  for dec in _decoders():
    out = transforms.Compose([transforms.ResizeCenterCrop(16, crop_pct=1.0)], 1, dec)(buf.getvalue(), None)
    assert out.shape == (16, 16, 1) and out.dtype == np.uint8
    assert abs(int(out.mean()) - 76) <= 1  # PIL's luma of pure red


def test_eval_transform_matches_resize_then_center_crop():
  img = sample_images.random_photo(sample_images.source_photos(), np.random.default_rng(1), size=(500, 375))
  op = transforms.ResizeCenterCrop(224, crop_pct=0.875)
  got = np.asarray(op(img), np.float32)
  resized = img.resize((341, 256), Image.Resampling.BICUBIC)  # shorter side 256
  left, top = int(round((341 - 224) / 2)), int(round((256 - 224) / 2))
  ref = np.asarray(resized.crop((left, top, left + 224, top + 224)), np.float32)
  assert got.shape == ref.shape == (224, 224, 3)
  # One box resize samples exactly where resize-then-crop does; only rounding in PIL's coefficients differs.
  assert np.abs(got - ref).max() <= 2.0


def test_random_resized_crop_handles_tiny_images_and_is_seeded():
  tiny = np.random.default_rng(0).integers(0, 255, (3, 5, 3), dtype=np.uint8)
  compose = transforms.Compose([transforms.RandomResizedCrop(32, scale=(0.2, 1.0)),
                                transforms.RandomHorizontalFlip()], 3)
  a = compose(tiny, np.random.default_rng(5))
  b = compose(tiny, np.random.default_rng(5))
  assert a.shape == (32, 32, 3)
  np.testing.assert_array_equal(a, b)


def test_augment_registry_is_how_recipes_are_added():
  @transforms.register_augment('test_center_only')
  def _center(cfg):
    return [transforms.ResizeCenterCrop(cfg.image_size, crop_pct=1.0)]

  try:
    cfg = pipeline.default_data_config()
    cfg.augment = 'test_center_only'
    t = transforms.build_train_transform(cfg, 1)
    out = t(np.full((8, 8, 1), 9, np.uint8), np.random.default_rng(0))
    assert out.shape == (16, 16, 1) and (out == 9).all()
    with pytest.raises(ValueError, match='already registered'):
      transforms.register_augment('test_center_only')(_center)
    cfg.augment = 'nope'
    with pytest.raises(ValueError, match='registered'):
      transforms.build_train_transform(cfg, 1)
  finally:
    transforms.AUGMENTS.pop('test_center_only')


def test_normalize_matches_formula_and_decoder_errors():
  x = np.random.default_rng(0).integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
  ref = (x / 255.0 - np.array(mean)) / np.array(std)
  np.testing.assert_allclose(transforms.normalize(x, mean, std), ref, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='unknown decoder'):
    transforms.resolve_decoder('turbo')
