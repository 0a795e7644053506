"""SimMIM: the encoder sees the mask token exactly at masked positions, the loss is L1 over masked pixels only,
and a few training steps on the bundled digits reduce the loss."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import load_config

from mim_jax import methods
from mim_jax.data import pipeline
from mim_jax.models.vit import sincos_2d_table
from mim_jax.targets import patchify, unpatchify
from mim_jax.train import state as state_lib


@pytest.fixture(scope='module')
def setup():
  config = load_config('configs/simmim/digits.py', 'tiny')
  method = methods.build(config, methods.Facts.for_images((16, 16, 1)))
  images = jax.random.normal(jax.random.key(0), (4, 16, 16, 1))
  params = nn.meta.unbox(jax.jit(method.init)(jax.random.key(1), {'image': images})[0])
  mask = method.masker(jax.random.key(2), images.shape[0]).mask
  return config, method, params, images, mask


_FORWARD = {}


def forward(method, *args):
  # One compiled program (instead of op-by-op dispatch), shared by the tests of this module.
  fn = _FORWARD.setdefault(id(method), jax.jit(method.forward))
  return fn(*args)


def test_config_is_simmim_with_coarse_masks(setup):
  config, method, _, _, mask = setup
  assert config.method == 'simmim' and config.norm_pix_loss is False
  assert method.masker.name == 'coarse' and method.masker.cell_size == 2
  m = np.asarray(mask)
  assert m.shape == (4, 16) and np.all(m.sum(1) == 10)  # 16 - int(16 * 0.4)


def test_encoder_input_is_mask_token_exactly_at_masked_positions(setup):
  _, method, params, images, mask = setup

  def first_block_input(params):
    seen = {}

    def record(next_fun, args, kwargs, context):
      if context.module.name == 'blocks_0' and context.method_name == '__call__':
        seen['x'] = args[0]
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      method.forward(params, images, mask)
    return seen['x']

  x = np.asarray(jax.jit(first_block_input)(params))  # [B, 1 + N, D]: CLS, then the tokens entering block 0
  enc = params['encoder']
  tokens = x[:, 1:] - sincos_2d_table(x.shape[-1], 4, 4)[None]
  embedded = np.asarray(patchify(images, 4) @ enc['patch_embed']['kernel'] + enc['patch_embed']['bias'])
  token = np.asarray(enc['mask_token'])[0, 0]
  m = np.asarray(mask) > 0.5
  np.testing.assert_allclose(tokens[m], np.broadcast_to(token, tokens[m].shape), atol=1e-5)
  np.testing.assert_allclose(tokens[~m], embedded[~m], atol=1e-5)
  # The two cases are distinguishable (otherwise the assertions above could not fail).
  assert np.abs(embedded[m] - token).max() > 1e-2


def test_masked_pixels_never_reach_the_prediction(setup):
  _, method, params, images, mask = setup
  pixel_mask = np.asarray(unpatchify(jnp.repeat(mask[..., None], 16, -1), 4, (4, 4), 1))
  noise = 5.0 * jax.random.normal(jax.random.key(3), images.shape)
  base = forward(method, params, images, mask)['pred']
  hidden_changed = forward(method, params, images + noise * pixel_mask, mask)['pred']
  visible_changed = forward(method, params, images + noise * (1 - pixel_mask), mask)['pred']
  np.testing.assert_allclose(hidden_changed, base, atol=1e-5)
  assert np.abs(np.asarray(visible_changed) - np.asarray(base)).max() > 1e-3


def test_loss_is_l1_over_masked_pixels_only(setup):
  _, method, params, images, mask = setup
  out = forward(method, params, images, mask)
  # The reference's formulation on the pixel grid: sum(|x - x_rec| * pixel_mask) / sum(pixel_mask) / channels.
  pred_img = np.asarray(unpatchify(out['pred'], 4, (4, 4), 1))
  pixel_mask = np.asarray(unpatchify(jnp.repeat(mask[..., None], 16, -1), 4, (4, 4), 1))
  raw = np.asarray(images)  # SimMIM regresses the dataset-normalized pixels themselves (no per-patch norm)
  expected = (np.abs(raw - pred_img) * pixel_mask).sum() / pixel_mask.sum() / raw.shape[-1]
  np.testing.assert_allclose(float(out['loss']), expected, rtol=1e-5)
  # ...and it is neither the L1 over all pixels nor an L2 (so the check above discriminates).
  assert abs(np.abs(raw - pred_img).mean() - expected) > 1e-3
  assert abs(((raw - pred_img) ** 2 * pixel_mask).sum() / pixel_mask.sum() - expected) > 1e-3


def test_coarse_mask_takes_the_token_size_from_the_encoder():
  config = load_config('configs/simmim/digits.py', 'tiny')
  config.mask = dict(name='coarse', ratio=0.6, mask_patch_size=8)  # 8 px cells over 4 px tokens: 2x2 tokens
  assert methods.build(config, methods.Facts.for_images((16, 16, 1))).masker.cell_size == 2
  config.mask = dict(name='coarse', ratio=0.6, mask_patch_size=8, token_patch_size=16)
  with pytest.raises(ValueError, match='token_patch_size'):
    methods.build(config, methods.Facts.for_images((16, 16, 1)))


def test_a_few_training_steps_reduce_the_loss_on_digits(setup):
  config, method, *_ = setup
  data = pipeline.eval_arrays(config.data, split='train', max_examples=64)
  images = jnp.asarray(data['image'])
  tx = optax.adamw(3e-3, b1=0.9, b2=0.95, weight_decay=0.05)
  state = nn.meta.unbox(jax.jit(state_lib.make_init_fn(method, tx, {'image': images[:2]}))(jax.random.key(0)))
  step = jax.jit(state_lib.make_train_step(method, tx, lambda s: 3e-3))
  probe_mask = method.masker(jax.random.key(123), images.shape[0]).mask
  loss_of = jax.jit(lambda p: method.forward(p, images, probe_mask)['loss'])
  before = float(loss_of(state.params))
  for _ in range(30):
    state, metrics = step(state, {'image': images}, jax.random.key(7))
  after = float(loss_of(state.params))
  assert np.isfinite(after) and after < 0.8 * before, (before, after)
