"""What every method with a loss on hidden tokens promises: a mask that hides nothing is a one-line error at build
time (issue 27, item 6), not a run whose loss and gradients are 0 at every step."""

import pytest

from conftest import load_config
from mim_jax.methods.base import Facts, build

CASES = [  # (config, arg, image shape)
    ('configs/mae/digits.py', 'tiny', (32, 32, 1)),
    ('configs/simmim/digits.py', 'tiny', (32, 32, 1)),
    ('configs/spark/fashion_mnist.py', 'tiny', (32, 32, 1)),
    ('configs/videomae/moving_digits.py', 'tiny', (32, 32, 1)),
    ('configs/point_mae/shapes.py', 'tiny', (224, 224, 3)),
]


@pytest.mark.parametrize('path, arg, shape', CASES)
def test_a_mask_that_hides_nothing_is_refused(path, arg, shape):
  c = load_config(path, arg)
  build(c, Facts.for_images(shape))  # the recipe itself builds
  c.mask.ratio = 0.0
  with pytest.raises(ValueError, match='hides no token') as e:
    build(c, Facts.for_images(shape))
  assert '\n' not in str(e.value)


def test_mae_on_every_patch_may_hide_nothing():
  c = load_config('configs/mae/digits.py', 'tiny')
  c.mask.ratio, c.loss_on = 0.0, 'all'  # the paper's loss-on-all-patches ablation still has a target
  build(c, Facts.for_images((32, 32, 1)))
