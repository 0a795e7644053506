"""Interop without torch: exact round trips through every format, the official fixtures, features(), resizing, CLI."""

from __future__ import annotations

import dataclasses
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mim_jax
from conftest import FIXTURES
from mim_jax import convert as convert_cli
from mim_jax import interop
from mim_jax.interop import official_mae
from mim_jax.interop.pos_embed import bicubic_matrix, is_sincos
from mim_jax.weights.spec import DecoderSpec, ModelSpec, flatten, random_checkpoint
from mim_jax.weights.tensors import read_tensors, write_tensors

SPEC = ModelSpec(patch_size=8, width=64, depth=2, num_heads=4, image_size=(32, 32),
                 decoder=DecoderSpec(width=32, depth=1, num_heads=4), norm_pix_loss=True)
# A timm-style fine-tuned classifier: learned positions, global average pooling with fc_norm, a head.
FINETUNED = dataclasses.replace(SPEC, pos_embed='learned', final_norm=False, fc_norm=True, num_classes=5,
                                global_pool='avg', decoder=None)
HEADS = dict(num_heads=4, decoder_num_heads=4)


def _perturbed(spec, seed=0):
  return random_checkpoint(spec, seed)


def _assert_same_params(a, b):
  fa, fb = flatten(a), flatten(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


@pytest.mark.parametrize('fmt, name', [('mim_jax', 'm.safetensors'), ('hf_vitmae', 'hf_dir'),
                                       ('mae_official', 'o.safetensors'), ('mae_official', 'o.npz')])
def test_round_trip_with_decoder_is_exact(tmp_path, fmt, name):
  ckpt = _perturbed(SPEC)
  dst = str(tmp_path / name)
  interop.save(ckpt, dst, fmt)
  back = interop.load(dst, fmt, **HEADS)
  _assert_same_params(back.params, ckpt.params)
  assert back.spec.decoder == SPEC.decoder and back.spec.grid == SPEC.grid and back.spec.pos_embed == 'sincos'


@pytest.mark.parametrize('spec', [SPEC, FINETUNED], ids=['mae_encoder', 'finetuned'])
@pytest.mark.parametrize('fmt', ['mim_jax', 'timm', 'mae_official', 'hf_vitmae'])
def test_encoder_round_trip_is_exact(tmp_path, spec, fmt):
  ckpt = _perturbed(spec).encoder_only()
  dst = str(tmp_path / ('hf' if fmt == 'hf_vitmae' else 'w.safetensors'))
  if fmt == 'hf_vitmae' and not spec.final_norm:
    with pytest.raises(ValueError, match='Export it to timm'):
      interop.save(ckpt, dst, fmt)
    return
  interop.save(ckpt, dst, fmt)
  back = interop.load(dst, fmt, **HEADS)
  _assert_same_params(back.params, ckpt.params)
  expected = dataclasses.replace(spec, decoder=None, norm_pix_loss=back.spec.norm_pix_loss)
  assert back.spec == expected


def test_mim_jax_file_keeps_the_whole_spec(tmp_path):
  spec = dataclasses.replace(SPEC, pixel_mean=(0.5,) * 3, pixel_std=(0.25,) * 3, image_size=(32, 48))
  ckpt = _perturbed(spec)
  path = interop.save(ckpt, str(tmp_path / 'm.safetensors'), 'mim_jax')[0]
  tensors, metadata = read_tensors(path)
  assert metadata['format'] == 'mim_jax' and 'encoder/blocks_0/attn/qkv/kernel' in tensors
  assert interop.load(path, 'mim_jax').spec == spec


def test_official_fixture_reads_runs_and_writes_back():
  files = sorted(glob.glob(str(FIXTURES / '*.npz')))
  assert files, f'official MAE fixtures not found under {FIXTURES}'
  from mim_jax.interop import parity

  fx = parity.load(files[0])
  model = fx.config().model
  ckpt = official_mae.checkpoint_from_official(fx.params, num_heads=model.encoder.num_heads,
                                               decoder_num_heads=model.decoder.num_heads).check()
  assert ckpt.spec.pos_embed == 'sincos' and ckpt.spec.decoder.depth == model.decoder.depth
  # Writing back reproduces the official state dict exactly, fixed position tables included.
  out = official_mae.checkpoint_to_official(ckpt)
  assert sorted(out) == sorted(fx.params)
  for k, v in fx.params.items():
    np.testing.assert_array_equal(out[k], v, err_msg=k)
  # The encoder goes through the timm reader, the decoder through from_official: together they give exactly the
  # params that the parity tests (tests/test_mae_parity.py) run against the official outputs.
  _assert_same_params(ckpt.params, official_mae.from_official(fx.params))


def test_features_match_the_encoder_and_batch_padding():
  ckpt = _perturbed(SPEC)
  images = np.random.default_rng(0).standard_normal((5, 32, 32, 3)).astype(np.float32)
  feats = mim_jax.features(ckpt, images, batch_size=2)  # 2 + 2 + 1 (padded) batches
  with jax.default_matmul_precision('highest'):
    tokens = np.asarray(jax.jit(SPEC.build_encoder().apply)({'params': ckpt.params['encoder']}, images)['tokens'])
  np.testing.assert_allclose(feats['cls'], tokens[:, 0], atol=1e-5)  # padded batches: float32 rounding
  np.testing.assert_allclose(feats['patch_tokens'], tokens[:, 1:], atol=1e-5)
  np.testing.assert_allclose(feats['pooled'], tokens[:, 1:].mean(1), atol=1e-5)
  assert feats['patch_tokens'].shape == (5, 16, 64)


def test_uint8_images_need_a_normalization(tmp_path):
  ckpt = _perturbed(dataclasses.replace(SPEC, pixel_mean=(0.4, 0.5, 0.6), pixel_std=(0.2, 0.25, 0.3)))
  path = interop.save(ckpt, str(tmp_path / 'm.safetensors'), 'mim_jax')[0]
  pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  with pytest.raises(ValueError, match="normalize='checkpoint'"):
    mim_jax.features(path, pixels)
  by_hand = (pixels / 255.0 - np.array([0.4, 0.5, 0.6])) / np.array([0.2, 0.25, 0.3])
  expected = mim_jax.features(path, by_hand.astype(np.float32))
  for normalize in ('checkpoint', ((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))):
    got = mim_jax.features(path, pixels, normalize=normalize)
    np.testing.assert_allclose(got['cls'], expected['cls'], atol=1e-5)
  with pytest.raises(ValueError, match='already normalized'):
    mim_jax.features(path, by_hand.astype(np.float32), normalize='imagenet')


def test_resize_keeps_sincos_exact_and_resamples_learned_tables():
  ckpt = _perturbed(SPEC)
  bigger = interop.resize(ckpt, (48, 48))
  assert bigger.spec.grid == (6, 6) and bigger.params is ckpt.params  # sin-cos: computed for the new grid
  learned = interop.resize(interop.materialize_pos_embed(ckpt), (48, 48))
  table = learned.params['encoder']['pos_embed']
  assert table.shape == (1, 37, 64) and learned.spec.pos_embed == 'learned'
  np.testing.assert_array_equal(table[:, 0], 0.0)  # CLS row kept
  assert not is_sincos(table, (6, 6))  # resampled, not recomputed (the values are checked against torch elsewhere)
  for n_in, n_out in [(4, 6), (14, 24), (5, 3)]:
    np.testing.assert_allclose(bicubic_matrix(n_in, n_out).sum(1), 1.0, atol=1e-12)  # a constant stays constant
  np.testing.assert_allclose(bicubic_matrix(7, 7), np.eye(7), atol=1e-12)
  feats = mim_jax.features(learned, np.zeros((1, 48, 48, 3), np.float32))
  assert feats['patch_tokens'].shape == (1, 36, 64)


def test_clear_errors_for_unsupported_inputs(tmp_path):
  ckpt = _perturbed(SPEC).encoder_only()
  timm_file = interop.save(ckpt, str(tmp_path / 't.safetensors'), 'timm')[0]
  with pytest.raises(ValueError, match='not a mim_jax checkpoint.*mim_jax.convert'):
    interop.load(timm_file, 'mim_jax')
  with pytest.raises(ValueError, match='num_heads'):  # width 64 is no standard ViT: heads must be given
    interop.load(timm_file, 'timm')
  state, _ = read_tensors(timm_file)
  layer_scale = dict(state, **{'blocks.0.ls1.gamma': np.ones(64, np.float32)})
  write_tensors(str(tmp_path / 'ls.safetensors'), layer_scale)
  with pytest.raises(ValueError, match='layer scale'):
    interop.load(str(tmp_path / 'ls.safetensors'), 'timm', num_heads=4)
  sincos_only = dict(state, pos_embed=state['pos_embed'] + 0.1)
  write_tensors(str(tmp_path / 'learned.safetensors'), sincos_only)
  with pytest.raises(ValueError, match='--pos-embed learned'):
    interop.load(str(tmp_path / 'learned.safetensors'), 'timm', num_heads=4, pos_embed='sincos')
  with pytest.raises(ValueError, match='unknown source format'):
    interop.load(timm_file, 'keras')
  with pytest.raises(ValueError, match='shape'):
    interop.save(interop.Checkpoint(ckpt.params, dataclasses.replace(ckpt.spec, width=32, num_heads=4)),
                 str(tmp_path / 'bad.safetensors'), 'mim_jax')


def test_cli_converts_and_reports(tmp_path, capsys):
  ckpt = _perturbed(SPEC)
  src = interop.save(ckpt, str(tmp_path / 'src.safetensors'), 'mim_jax')[0]
  dst = str(tmp_path / 'timm_384.safetensors')
  assert convert_cli.main(['--from', 'mim_jax', '--to', 'timm', '--learned-pos-embed', '--image-size', '48',
                           src, dst]) == 0
  out = capsys.readouterr().out
  assert 'wrote ' + dst in out and 'timm.create_model(' in out and 'no MAE decoder' in out
  assert read_tensors(dst)[0]['pos_embed'].shape == (1, 37, 64)
  assert convert_cli.main(['--from', 'timm', '--to', 'hf_vitmae', '--num-heads', '4', dst,
                           str(tmp_path / 'hf')]) == 0
  assert os.path.exists(tmp_path / 'hf' / 'config.json')
  assert convert_cli.main(['--from', 'timm', '--to', 'mim_jax', str(tmp_path / 'missing.pth'),
                           str(tmp_path / 'x.safetensors')]) == 2
  assert 'no such checkpoint file' in capsys.readouterr().err


@pytest.mark.slow  # trains 3 steps (~20 s idle, over a minute on a busy box)
@pytest.mark.parametrize('blocks', [{}, {'norm': 'rmsnorm', 'mlp': 'swiglu', 'rope': '1d', 'class_token': 'last',
                                        'swiglu_multiple_of': 32}])
def test_workdir_is_a_source(tmp_path, tiny_config, blocks):
  from mim_jax.train import loop

  tiny_config.total_steps = 3  # > warmup (2)
  tiny_config.model.encoder.update(blocks)  # iLLaMA's blocks (no causal mask under MAE) travel in the description
  result = loop.train(tiny_config, str(tmp_path / 'run'))
  ckpt = interop.load(str(tmp_path / 'run'), 'mim_jax')
  assert ckpt.spec.options == blocks
  assert ckpt.spec.decoder is not None and ckpt.spec.pixel_mean is not None and ckpt.spec.channels == 1
  params = jax.device_get(result.state.params)
  _assert_same_params(ckpt.params, jax.tree.map(np.asarray, params))
  images = np.random.default_rng(0).standard_normal((2, *ckpt.spec.image_size, 1)).astype(np.float32)
  with jax.default_matmul_precision('highest'):
    ref = result.method.encode(params, {'image': jnp.asarray(images)})
  feats = mim_jax.features(str(tmp_path / 'run'), images)
  np.testing.assert_allclose(feats['cls'], ref['cls'], atol=1e-5)
  np.testing.assert_allclose(feats['pooled'], ref['pooled'], atol=1e-5)
