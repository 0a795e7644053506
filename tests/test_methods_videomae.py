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


def _params(method, seed=0):
  """Random params of the init's shapes (no initializer compile)."""
  rng = np.random.default_rng(seed)
  clips = jnp.zeros((2, *method.clip_shape))
  shapes = jax.eval_shape(method.init, jax.random.key(0), {'video': clips, 'label': jnp.zeros(2, jnp.int32)})[0]
  return jax.tree.map(lambda a: jnp.asarray(0.1 * rng.standard_normal(a.shape), jnp.float32),
                      __import__('flax').linen.meta.unbox(shapes))


def test_loss_on_decoded_also_counts_the_tubelets_the_encoder_saw():
  masked, decoded = _method(), _method(loss_on='decoded')
  clips = jnp.asarray(np.random.default_rng(0).standard_normal((2, *masked.clip_shape)), jnp.float32)
  params = _params(masked)
  info, ids = masked.draw_masks(jax.random.key(3), 2)
  a = jax.jit(masked.forward)(params, clips, info, ids)
  b = jax.jit(decoded.forward)(params, clips, info, ids)
  np.testing.assert_array_equal(np.asarray(a['pred']), np.asarray(b['pred']))
  weight = np.asarray(a['loss_weight'])
  assert 0 < weight.sum() < weight.size and np.asarray(b['loss_weight']).min() == 1.0
  per = np.asarray(a['loss_per_token'])
  np.testing.assert_allclose(float(a['loss']), (per * weight).sum() / weight.sum(), rtol=1e-6)
  np.testing.assert_allclose(float(b['loss']), per.mean(), rtol=1e-6)
  # Frozen features: the encoder on the whole clip (every tubelet), mean-pooled; no CLS.
  out = jax.jit(masked.encode)(params, {'video': clips})
  assert out['cls'] is None and out['patch_tokens'].shape == (2, 64, 32)
  np.testing.assert_allclose(np.asarray(out['pooled']), np.asarray(out['patch_tokens']).mean(1), rtol=1e-5,
                             atol=1e-6)


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


def test_recipes_build_and_validate():
  from conftest import load_config
  from mim_jax.config import validate

  for path, arg in (('configs/videomae/moving_digits.py', None), ('configs/videomae/moving_digits.py', 'tiny'),
                    ('configs/videomae/k400.py', None), ('configs/videomae/k400.py', 'cpu'),
                    ('configs/videomae/k400.py', 'large')):
    validate(load_config(path, arg))
  v1 = load_config('configs/videomae/moving_digits.py', 'v1,direction')
  assert v1.videomae.decoder_mask == 'none' and v1.data.clips.label == 'direction'
  k400 = load_config('configs/videomae/k400.py')
  assert (k400.data.num_frames, k400.mask.ratio, k400.videomae.decoder_mask_ratio, k400.model.decoder.depth) == (
      16, 0.9, 0.5, 4)
  assert k400.data.clips.kind == 'stored' and k400.data.clips.stride == 4  # sampling rate 4 on converted videos
  large = load_config('configs/videomae/k400.py', 'large')  # scripts/pretrain/vit_l_hybrid_pt.sh
  assert (large.model.encoder.variant, large.model.decoder.width, large.model.decoder.num_heads, large.epochs) == (
      'large/16', 512, 8, 300.0)
  with pytest.raises(ValueError, match='unknown argument'):
    load_config('configs/videomae/k400.py', 'v3')


@pytest.mark.slow
def test_pretrain_on_moving_digits_end_to_end(tmp_path):
  import json

  from conftest import load_config
  from mim_jax.train import loop

  loop.train(load_config('configs/videomae/moving_digits.py', 'tiny'), str(tmp_path))
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  losses = [r['train/loss'] for r in rows if 'train/loss' in r]
  assert losses and all(np.isfinite(losses)) and (tmp_path / 'checkpoints').exists()


@pytest.mark.slow  # kept out of the default run for its time (the default suite stays near 15 min)
def test_multi_view_testing_averages_the_views_softmax():
  from mim_jax.data import mixup
  from mim_jax.eval.finetune import ClipInput, FinetuneObjective
  from mim_jax.models.classifier import Classifier

  m = _method()
  encoder = m.encoder.for_finetuning(drop_path=0.0, pooled=True, dtype=jnp.float32, remat='none')
  cfg = ml_collections.ConfigDict({'clips': {'kind': 'stored', 'test_views': (2, 3)}})
  clips = ClipInput(m, cfg)
  assert clips.views == 6 and clips.fields(False)['video'].shape == (6, *m.clip_shape)
  assert clips.fields(True)['video'].shape == m.clip_shape
  objective = FinetuneObjective(Classifier(encoder, 5, head_init_std=0.5), mixup.MixupConfig(), m.image_shape,
                                clips=clips)
  rng = np.random.default_rng(0)
  views = jnp.asarray(rng.standard_normal((2, 6, *m.clip_shape)), jnp.float32)
  params, extras = objective.init(jax.random.key(0), {'video': views[:, 0], 'label': jnp.zeros(2, jnp.int32)})
  got = objective.logits((params, extras, 0), {'video': views})
  per_view = objective.model.apply({'params': params}, views.reshape(12, *m.clip_shape))
  want = np.log(np.asarray(jax.nn.softmax(per_view, -1)).reshape(2, 6, 5).mean(1))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='random erasing is defined for images'):
    FinetuneObjective(objective.model, mixup.MixupConfig(), m.image_shape, erasing_prob=0.25, clips=clips)


def ft_clip_shape(workdir) -> tuple[int, ...]:
  from mim_jax import workdir as workdir_lib
  from mim_jax.data import pipeline

  config = workdir_lib.read_config(str(workdir))
  return build(config, Facts(pipeline.dataset_info(config.data))).clip_shape


@pytest.mark.slow
def test_fine_tune_a_videomae_run_on_clips(tmp_path):
  from conftest import load_config
  from mim_jax.eval import tasks
  from mim_jax.train import loop

  loop.train(load_config('configs/videomae/moving_digits.py', 'tiny'), str(tmp_path / 'pre'))
  ft = load_config('configs/videomae/finetune_moving_digits.py', 'tiny')
  ft.init = str(tmp_path / 'pre')
  result = tasks.run(ft, str(tmp_path / 'ft'))
  assert result['method'] == 'videomae' and 0.0 <= result['finetune/top1'] <= 1.0
  import mim_jax  # the fine-tuned classifier exports as a video model: it reads clips of the trained length
  clips = np.zeros((2, *ft_clip_shape(tmp_path / 'pre')), np.float32)
  assert mim_jax.features(str(tmp_path / 'ft'), clips)['pooled'].shape[0] == 2
  knn = load_config('configs/eval/knn.py')  # the image evaluators read clips: pooled tokens, the direction label
  knn.init, knn.feature, knn.data.clips.label = str(tmp_path / 'pre'), 'pooled', 'direction'
  assert 0.0 <= tasks.run(knn, str(tmp_path / 'knn'))['knn/top1'] <= 1.0
