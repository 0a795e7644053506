"""Checkpoint files and feature export for every registered encoder, not only MAE's ViT: timm ResNet / ConvNeXt
and official iLLaMA files convert to mim_jax files (their architecture in the model description), mim_jax.features
reads them (BatchNorm running statistics, iLLaMA's soft-mask rate) and they convert back unchanged. The
references are the outputs recorded by timm and the official iLLaMA code in the parity fixtures."""

import dataclasses
import json

import jax
import numpy as np
import pytest

import mim_jax
from conftest import FIXTURE_ROOT
from mim_jax import convert as convert_cli
from mim_jax import interop
from mim_jax.interop.parity import load as load_fixture
from mim_jax.weights.spec import ModelSpec, random_checkpoint
from mim_jax.weights.tensors import read_tensors, write_tensors


def _state_file(fx, path) -> str:
  """The fixture's official state dict (params and BatchNorm buffers) as a .safetensors file."""
  return write_tensors(str(path), {k: np.asarray(v, np.float32) for k, v in fx.params.items()})


def _nhwc(images):
  return np.ascontiguousarray(images.transpose(0, 2, 3, 1))


@pytest.mark.parametrize('name', ['resnet18_small', 'convnext_p2_s1'])
def test_timm_convnet_files_convert_export_features_and_convert_back(tmp_path, name):
  fx = load_fixture(str(FIXTURE_ROOT / 'timm_convnets' / f'{name}.npz'))
  src = _state_file(fx, tmp_path / 'timm.safetensors')
  images = _nhwc(fx.inputs['images'])
  dst = str(tmp_path / 'mim.safetensors')
  assert convert_cli.main(['--from', 'timm', '--to', 'mim_jax', '--source-image-size', str(images.shape[1]),
                           src, dst]) == 0
  ckpt = interop.load(dst, 'mim_jax')
  assert ckpt.spec.encoder == fx.config().model.encoder.name and ckpt.spec.image_size == images.shape[1:3]
  assert ckpt.spec.options['depths'] == tuple(fx.config().model.encoder.depths)
  assert ('encoder_batch_stats' in ckpt.params) == (name.startswith('resnet'))
  feats = mim_jax.features(dst, images)
  assert set(feats) == {'patch_tokens', 'pooled'}  # a ConvNet has no class token
  pooled, stage3 = fx.outputs['pooled'], _nhwc(fx.outputs['stage3'])
  np.testing.assert_allclose(feats['pooled'], pooled, atol=1e-5 + 1e-4 * np.abs(pooled).max())
  np.testing.assert_allclose(feats['patch_tokens'], stage3.reshape(len(stage3), -1, stage3.shape[-1]),
                             atol=1e-5 + 1e-4 * np.abs(stage3).max())
  # back to timm's names: the same tensors, the BatchNorm buffers included
  assert convert_cli.main(['--from', 'mim_jax', '--to', 'timm', dst, str(tmp_path / 'back.safetensors')]) == 0
  back, _ = read_tensors(str(tmp_path / 'back.safetensors'))
  original = {k: v for k, v in fx.params.items() if not k.endswith('num_batches_tracked')}
  assert set(original) <= set(back)
  for k, v in original.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_official_illama_files_convert_and_export_at_the_recorded_rate(tmp_path):
  for fixture, rate in (('illama_official_rate0', 0.0), ('illama_official_rate03', 0.3)):
    fx = load_fixture(str(FIXTURE_ROOT / 'official_illama' / f'{fixture}.npz'))
    heads = fx.config().model.encoder.num_heads
    ckpt = interop.load(_state_file(fx, tmp_path / f'{fixture}.safetensors'), 'illama_official', num_heads=heads)
    assert ckpt.spec.options['class_token'] == 'last' and ckpt.spec.options['rope'] == '1d'
    if rate:  # the model description carries the rate the model is evaluated at (default: causal, 0)
      ckpt = dataclasses.replace(ckpt, spec=dataclasses.replace(ckpt.spec, soft_mask_rate=rate))
    interop.save(ckpt, str(tmp_path / 'mim.safetensors'), 'mim_jax')
    feats = mim_jax.features(str(tmp_path / 'mim.safetensors'), _nhwc(fx.inputs['images']))
    ref = fx.outputs['features']  # the official final-norm CLS (last) token
    np.testing.assert_allclose(feats['cls'], ref, atol=1e-5 + 1e-4 * np.abs(ref).max(), err_msg=fixture)
  interop.save(interop.load(str(tmp_path / 'mim.safetensors'), 'mim_jax'), str(tmp_path / 'back.safetensors'),
               'illama_official')
  back, _ = read_tensors(str(tmp_path / 'back.safetensors'))
  assert set(back) == set(fx.params) - {'freqs_cis'}
  for k, v in back.items():
    np.testing.assert_array_equal(v, fx.params[k], err_msg=k)
  # A new resolution resamples the patch rows of the table; iLLaMA's CLS row stays last and unchanged.
  h = ckpt.spec.image_size[0]
  bigger = interop.resize(ckpt, (2 * h, 2 * h))
  table, resized = ckpt.params['encoder']['pos_embed'], bigger.params['encoder']['pos_embed']
  assert resized.shape[1] == 4 * (table.shape[1] - 1) + 1
  np.testing.assert_array_equal(resized[:, -1], table[:, -1])


def test_formats_that_hold_plain_vits_refuse_other_models_in_one_line(tmp_path):
  fx = load_fixture(str(FIXTURE_ROOT / 'official_illama' / 'illama_official_rate0.npz'))
  illama = interop.load(_state_file(fx, tmp_path / 'illama.safetensors'), 'illama_official')
  for fmt, dst in (('timm', 'x.safetensors'), ('hf_vitmae', 'hf'), ('mae_official', 'x.pth')):
    with pytest.raises(ValueError, match=f'the {fmt} format holds plain MAE-style ViTs.*--to mim_jax'):
      interop.save(illama, str(tmp_path / dst), fmt)
  resnet = random_checkpoint(ModelSpec.for_encoder(
      _tiny_resnet(), (16, 16, 1)))
  with pytest.raises(ValueError, match="official iLLaMA layout holds ViTs"):
    interop.save(resnet, str(tmp_path / 'r.safetensors'), 'illama_official')
  with pytest.raises(ValueError, match='has no position table'):
    interop.materialize_pos_embed(resnet)
  assert interop.resize(resnet, (32, 32)).spec.image_size == (32, 32)  # a ConvNet takes any size


def _tiny_resnet():
  from mim_jax.models.encoders import build_encoder

  return build_encoder({'name': 'resnet', 'depths': (1, 1), 'widths': (4, 8), 'stem': 'small', 'stem_width': 4})


def test_model_descriptions_round_trip_and_older_files_still_read():
  spec = ModelSpec.for_encoder(_tiny_resnet(), (16, 16, 1), num_classes=3)
  d = json.loads(spec.to_json())
  assert d['encoder'] == 'resnet' and 'patch_size' not in d and d['encoder_options']['widths'] == [4, 8]
  assert ModelSpec.from_json(spec.to_json()) == spec and hash(ModelSpec.from_json(spec.to_json())) == hash(spec)
  ckpt = random_checkpoint(spec)
  assert set(ckpt.params) == {'encoder', 'encoder_batch_stats', 'head'}
  assert ckpt.params['head']['kernel'].shape == (8, 3)  # width = the pooled feature's
  # A format-1 description (before other encoders) reads as the ViT it describes.
  v1 = {'format_version': 1, 'patch_size': 4, 'width': 24, 'depth': 1, 'num_heads': 2, 'image_size': [16, 16],
        'channels': 1, 'mlp_ratio': 4.0, 'pos_embed': 'sincos', 'final_norm': True, 'fc_norm': False,
        'num_classes': 0, 'global_pool': 'token', 'decoder': None, 'norm_pix_loss': None, 'pixel_mean': None,
        'pixel_std': None}
  old = ModelSpec.from_json(json.dumps(v1))
  assert old.is_plain_vit and old.build_encoder().width == 24
  with pytest.raises(ValueError, match="describe ViTs; a 'resnet' encoder keeps its architecture"):
    ModelSpec(encoder='resnet', width=8, patch_size=4, image_size=(16, 16))
  with pytest.raises(ValueError, match='newer than this mim_jax'):
    ModelSpec.from_json(json.dumps({**v1, 'format_version': 99}))


def test_a_vit_with_block_options_keeps_them_in_its_description(tmp_path):
  from mim_jax.models.vit import ViTEncoder

  module = ViTEncoder(patch_size=4, width=32, depth=1, num_heads=2, norm='rmsnorm', mlp='swiglu', rope='1d',
                      class_token='last', qkv_bias='qv', layer_scale=0.1, swiglu_multiple_of=32, drop_path=0.3)
  spec = ModelSpec.for_encoder(module, (16, 16, 3))
  assert spec.options == {'norm': 'rmsnorm', 'mlp': 'swiglu', 'rope': '1d', 'class_token': 'last',
                          'qkv_bias': 'qv', 'layer_scale': 0.1, 'swiglu_multiple_of': 32}  # no run settings
  path = interop.save(random_checkpoint(spec, seed=1), str(tmp_path / 'v.safetensors'), 'mim_jax')[0]
  ckpt = interop.load(path, 'mim_jax')
  images = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype(np.float32)
  with jax.default_matmul_precision('highest'):
    ref = module.clone(drop_path=0.0).apply({'params': ckpt.params['encoder']}, images)
  feats = mim_jax.features(path, images)
  np.testing.assert_allclose(feats['cls'], ref['cls'], atol=1e-5)
  np.testing.assert_allclose(feats['patch_tokens'], ref['patch_tokens'], atol=1e-5)


def test_a_video_vit_exports_with_its_clip_length_and_reads_clips(tmp_path):
  from mim_jax.models.vit import ViTEncoder

  module = ViTEncoder(patch_size=4, width=32, depth=1, num_heads=2, class_token='none', pos_embed='sincos_1d',
                      qkv_bias='qv', tubelet_size=2)
  spec = ModelSpec.for_encoder(module, (4, 16, 16, 3))
  assert spec.num_frames == 4 and spec.input_shape == (4, 16, 16, 3)
  assert ModelSpec.from_json(spec.to_json()) == spec
  assert 'num_frames' not in json.loads(ModelSpec.for_encoder(ViTEncoder(patch_size=4, width=32, depth=1,
                                                                           num_heads=2), (16, 16, 3)).to_json())
  path = interop.save(random_checkpoint(spec, seed=2), str(tmp_path / 'video.safetensors'), 'mim_jax')[0]
  clips = np.random.default_rng(0).standard_normal((2, 4, 16, 16, 3)).astype(np.float32)
  with jax.default_matmul_precision('highest'):
    ref = module.apply({'params': interop.load(path, 'mim_jax').params['encoder']}, clips)
  feats = mim_jax.features(path, clips)
  assert feats['patch_tokens'].shape == (2, 2 * 4 * 4, 32) and 'cls' not in feats
  np.testing.assert_allclose(feats['pooled'], ref['pooled'], atol=1e-5)
  with pytest.raises(ValueError, match=r'video model: clips must be \[B, 4, 16, 16, 3\]'):
    mim_jax.features(path, clips[:, :2])
  with pytest.raises(ValueError, match='needs num_frames'):
    dataclasses.replace(spec, num_frames=None)
  with pytest.raises(ValueError, match='multiple of the tubelet size'):
    dataclasses.replace(spec, num_frames=3)
