"""Fine-tune augmentations: RandAugment (PIL ops in the grain pipeline) and random erasing (jit-able batch op)."""

import jax
import numpy as np
import pytest
from PIL import Image

from mim_jax.data import pipeline, transforms
from mim_jax.data import randaugment
from mim_jax.data.random_erasing import random_erasing


@pytest.mark.parametrize('mode', ['RGB', 'L'])
def test_every_op_keeps_size_and_mode(mode):
  rng = np.random.default_rng(0)
  img = Image.fromarray(rng.integers(0, 256, (20, 24, 3) if mode == 'RGB' else (20, 24), dtype=np.uint8), mode)
  for name, op in randaugment.OPS.items():
    out = op(img, 9.0, np.random.default_rng(1))
    assert out.size == img.size and out.mode == mode, name


def test_magnitude_zero_enhancements_and_geometry_are_identity():
  img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
  for name in ('ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing', 'SharpnessIncreasing', 'ShearX',
               'TranslateYRel', 'SolarizeAdd'):
    out = randaugment.OPS[name](img, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img), err_msg=name)
  assert np.asarray(randaugment.OPS['Invert'](img, 0.0, None)).tolist() == (255 - np.asarray(img)).tolist()


def test_rand_augment_is_seeded_and_prob_zero_is_identity():
  img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
  ra = randaugment.RandAugment()
  a = np.asarray(ra(img, np.random.default_rng(5)))
  assert np.array_equal(a, np.asarray(ra(img, np.random.default_rng(5))))
  changed = sum(not np.array_equal(np.asarray(ra(img, np.random.default_rng(s))), np.asarray(img)) for s in range(20))
  assert changed >= 10  # P(no op applied) = 0.25 per image
  off = randaugment.RandAugment(prob=0.0)
  assert np.array_equal(np.asarray(off(img, np.random.default_rng(5))), np.asarray(img))
  with pytest.raises(ValueError, match='unknown RandAugment ops'):
    randaugment.RandAugment(ops=('Blur',))


def test_registered_recipe_runs_in_the_pipeline_transform():
  cfg = pipeline.default_data_config('imagenet2012')
  cfg.augment, cfg.image_size = 'rrc_flip_randaug', 32
  compose = transforms.build_train_transform(cfg, 3)
  out = compose(np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8), np.random.default_rng(1))
  assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_random_erasing_boxes():
  images = jax.numpy.zeros((48, 16, 20, 3))
  erase = jax.jit(random_erasing)  # prob traced: one compile for both probabilities
  out, boxes = erase(jax.random.PRNGKey(0), images, 1.0)
  boxes = np.asarray(boxes)
  frac = boxes.mean(axis=(1, 2))
  assert (frac > 0).mean() > 0.9  # almost always some draw fits
  assert frac.max() <= 1 / 3 + 0.05 and frac[frac > 0].min() >= 0.02 - 0.01
  for b in boxes[frac > 0][:10]:  # one axis-aligned rectangle each
    rows, cols = np.nonzero(b)
    assert b[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
  np.testing.assert_array_equal(np.asarray(out)[~boxes], 0.0)  # outside the box untouched
  assert np.asarray(out)[boxes].std() > 0.5  # inside: standard-normal noise
  _, masks = erase(jax.random.PRNGKey(1), images, 0.25)
  assert 0.05 < (np.asarray(masks).any(axis=(1, 2))).mean() < 0.5
  same, _ = random_erasing(jax.random.PRNGKey(1), images, prob=0.0)
  assert same is images
