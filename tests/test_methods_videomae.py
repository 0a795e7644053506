"""VideoMAE / V2 beyond the parity fixtures: the decoder reconstructs the set each version defines, the loss sets,
the tubelet layout, and one-line errors for what cannot work."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mim_jax.methods.base import Facts, build
from mim_jax.models.vit import ViTEncoder, sincos_1d_table
from mim_jax.targets import normalize_tubelets, patchify_video

ENCODER = dict(patch_size=4, width=32, depth=1, num_heads=2, class_token='none', pos_embed='sincos_1d',
               qkv_bias='qv', tubelet_size=2)


def _method(frames=8, size=16, encoder=ENCODER, **videomae):
  c = ml_collections.ConfigDict({'method': 'videomae', 'model': {'encoder': dict(encoder),
                                 'decoder': dict(width=16, depth=1, num_heads=2)},
                                 'mask': {'name': 'tube', 'ratio': 0.75}, 'data': {'num_frames': frames},
                                 'videomae': dict(videomae)})
  return build(c, Facts.for_images((size, size, 3)))


def test_v2_decodes_the_running_cell_half_and_v1_the_masked_tubelets():
  v2, v1 = _method(), _method(decoder_mask='none')
  info, ids = v2.draw_masks(jax.random.key(0), 4)
  assert ids.shape == (4, 4 * 16 // 2)  # half of the 4 x 4 x 4 tubelets
  info1, ids1 = v1.draw_masks(jax.random.key(0), 4)
  assert ids1.shape == (4, 48)  # 12 of 16 masked per frame, 4 frames
  np.testing.assert_array_equal(np.take_along_axis(np.asarray(info1.mask), np.asarray(ids1), 1), 1.0)
  # V2's decoded set ignores the encoder mask: some decoded tubelets were visible to the encoder (the official
  # decoder processes them twice), and the official loss leaves them out.
  seen = np.take_along_axis(np.asarray(info.mask), np.asarray(ids), 1) == 0
  assert seen.any() and not seen.all()


def test_loss_on_decoded_also_counts_the_tubelets_the_encoder_saw():
  masked, decoded = _method(), _method(loss_on='decoded')
  clips = jnp.asarray(np.random.default_rng(0).standard_normal((2, *masked.clip_shape)), jnp.float32)
  params, _ = jax.jit(masked.init)(jax.random.key(0), {'video': clips, 'label': jnp.zeros(2, jnp.int32)})
  info, ids = masked.draw_masks(jax.random.key(3), 2)
  a, b = masked.forward(params, clips, info, ids), decoded.forward(params, clips, info, ids)
  np.testing.assert_array_equal(np.asarray(a['pred']), np.asarray(b['pred']))
  weight = np.asarray(a['loss_weight'])
  assert 0 < weight.sum() < weight.size and np.asarray(b['loss_weight']).min() == 1.0
  per = np.asarray(a['loss_per_token'])
  np.testing.assert_allclose(float(a['loss']), (per * weight).sum() / weight.sum(), rtol=1e-6)
  np.testing.assert_allclose(float(b['loss']), per.mean(), rtol=1e-6)


def test_tubelets_are_time_major_and_normalized_per_channel():
  clips = np.arange(2 * 4 * 8 * 8 * 3, dtype=np.float32).reshape(2, 4, 8, 8, 3)
  patches = np.asarray(patchify_video(jnp.asarray(clips), 2, 4))
  assert patches.shape == (2, 2 * 2 * 2, 2 * 4 * 4 * 3)
  # token (t=1, row=0, col=1) = frames 2-3, rows 0-3, columns 4-7; features (frame, row, column, channel)
  np.testing.assert_array_equal(patches[1, 4 + 1].reshape(2, 4, 4, 3), clips[1, 2:4, 0:4, 4:8])
  x = np.random.default_rng(0).normal(3.0, 2.0, (5, 2 * 4 * 4 * 3)).astype(np.float32)
  z = np.asarray(normalize_tubelets(jnp.asarray(x), 3)).reshape(5, -1, 3)
  np.testing.assert_allclose(z.mean(1), 0.0, atol=1e-5)
  np.testing.assert_allclose(z.std(1, ddof=1), 1.0, atol=1e-4)  # unbiased std (+ 1e-6)
  table = sincos_1d_table(6, 3)
  np.testing.assert_allclose(table[2], [np.sin(2), np.cos(2), np.sin(2 / 10000 ** (2 / 6)),
                                        np.cos(2 / 10000 ** (2 / 6)), np.sin(2 / 10000 ** (4 / 6)),
                                        np.cos(2 / 10000 ** (4 / 6))], rtol=1e-6)


def test_frozen_features_pool_the_whole_clip():
  m = _method()
  clips = jnp.zeros((2, *m.clip_shape))
  params, _ = jax.jit(m.init)(jax.random.key(0), {'video': clips, 'label': jnp.zeros(2, jnp.int32)})
  out = m.encode(params, {'video': clips})
  assert out['cls'] is None and out['patch_tokens'].shape == (2, 64, 32) and out['pooled'].shape == (2, 32)


def test_bad_settings_get_one_line_errors():
  with pytest.raises(ValueError, match='tubelet_size'):
    _method(encoder={**ENCODER, 'tubelet_size': 0, 'pos_embed': 'sincos'})
  with pytest.raises(ValueError, match='class_token'):
    _method(encoder={**ENCODER, 'class_token': 'first'})
  with pytest.raises(ValueError, match="pos_embed='sincos_1d'"):
    _method(encoder={**ENCODER, 'pos_embed': 'sincos'})
  with pytest.raises(ValueError, match='decoder_mask must be one of'):
    _method(decoder_mask='tube')
  with pytest.raises(ValueError, match='not a whole number of tubelets'):
    _method(frames=7)
  m = _method()
  with pytest.raises(ValueError, match='expected clips of shape'):
    m.loss_fn({}, {}, {'video': jnp.zeros((2, 4, 16, 16, 3))}, jax.random.key(0), 0)
  image_vit = ViTEncoder(patch_size=4, width=32, depth=1, num_heads=2)
  with pytest.raises(ValueError, match='need a tubelet embedding'):
    image_vit.init(jax.random.key(0), jnp.zeros((1, 4, 16, 16, 3)))
