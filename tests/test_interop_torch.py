"""Cross-framework interop: randomly initialised timm / Hugging Face PyTorch models, built locally (no downloads).

Run with the optional stack installed (``pip install -e .[torch]``): ``pytest -m torch``. Without torch, timm or
transformers these tests are skipped with the reason; with them they also run in the default ``pytest``.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='cross-framework tests need torch (pip install -e .[torch])')
pytestmark = pytest.mark.torch

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from mim_jax.interop.features import features as mim_features  # noqa: E402
from mim_jax import interop  # noqa: E402
from mim_jax.interop.pos_embed import resize_pos_embed, sincos_with_cls  # noqa: E402
from mim_jax.weights.spec import random_checkpoint  # noqa: E402
from mim_jax.weights.tensors import write_tensors  # noqa: E402
from mim_jax.interop.timm_vit import timm_model_kwargs  # noqa: E402

TOL = 1e-5  # float32 end to end on the CPU


def _timm():
  return pytest.importorskip('timm', reason='timm is not installed (pip install -e .[torch])')


def _transformers():
  return pytest.importorskip('transformers', reason='transformers is not installed (pip install -e .[torch])')


def _state(model) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _images(n=3, size=32, seed=0):
  return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)


def _nchw(images):
  return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


def _randomize(model, scale=0.05):
  # Torch inits zero the biases and set norms to (1, 0): perturb every parameter so every mapping is exercised.
  with torch.no_grad():
    for p in model.parameters():
      p.add_(scale * torch.randn_like(p))


def _timm_model(global_pool='token', seed=0):
  timm = _timm()
  torch.manual_seed(seed)
  model = timm.create_model('vit_base_patch16_224', pretrained=False, img_size=32, patch_size=8, embed_dim=64,
                            depth=2, num_heads=4, num_classes=5, global_pool=global_pool).eval()
  _randomize(model)
  return model


def _timm_forward(model, images):
  with torch.no_grad():
    tokens = model.forward_features(_nchw(images))
    return tokens.numpy(), model.forward_head(tokens, pre_logits=True).numpy(), model.forward_head(tokens).numpy()


@pytest.mark.parametrize('global_pool', ['token', 'avg'])
def test_timm_forward_matches_and_exports_back(tmp_path, global_pool):
  timm = _timm()
  from safetensors.torch import load_file

  model = _timm_model(global_pool)
  images = _images()
  tokens, pre_logits, logits = _timm_forward(model, images)
  src = write_tensors(str(tmp_path / 'timm.safetensors'), _state(model))

  ckpt = interop.load(src, 'timm', num_heads=4)
  assert ckpt.spec.pos_embed == 'learned'  # timm's random table is not sin-cos
  assert ckpt.spec.fc_norm == (global_pool == 'avg') and ckpt.spec.final_norm == (global_pool == 'token')
  feats = mim_features(ckpt, images)
  ours = np.concatenate([feats['cls'][:, None], feats['patch_tokens']], axis=1)
  np.testing.assert_allclose(ours, tokens, atol=TOL, rtol=0)
  ours_pre = feats['cls'] if global_pool == 'token' else feats['pooled']
  np.testing.assert_allclose(ours_pre, pre_logits, atol=TOL, rtol=0)
  head = ckpt.params['head']
  np.testing.assert_allclose(ours_pre @ head['kernel'] + head['bias'], logits, atol=TOL, rtol=0)

  # Export back: a fresh timm model loads it strictly and reproduces the original outputs exactly.
  dst = str(tmp_path / 'back.safetensors')
  interop.save(ckpt, dst, 'timm')
  kwargs = timm_model_kwargs(ckpt.spec)
  fresh = timm.create_model('vit_base_patch16_224', pretrained=False, **kwargs).eval()
  fresh.load_state_dict(load_file(dst), strict=True)
  for a, b in zip(_timm_forward(fresh, images), (tokens, pre_logits, logits)):
    np.testing.assert_array_equal(a, b)
  # ... and through timm's own pretrained-file path.
  overlay = timm.create_model('vit_base_patch16_224', pretrained=True, pretrained_cfg_overlay=dict(file=dst),
                              **kwargs).eval()
  np.testing.assert_array_equal(_timm_forward(overlay, images)[0], tokens)


def test_mim_jax_sincos_encoder_exports_to_timm_and_pth(tmp_path):
  """A mim_jax (sin-cos) encoder -> timm .pth -> timm gives mim_jax's features; and reads back exactly."""
  timm = _timm()
  ckpt = _mim_checkpoint()
  images = _images()
  feats = mim_features(ckpt, images)
  dst = str(tmp_path / 'enc.pth')
  interop.save(ckpt.encoder_only(), dst, 'timm')
  model = timm.create_model('vit_base_patch16_224', pretrained=False, **timm_model_kwargs(ckpt.spec)).eval()
  model.load_state_dict(torch.load(dst, weights_only=True), strict=True)
  tokens, pre_logits, _ = _timm_forward(model, images)
  np.testing.assert_allclose(tokens[:, 0], feats['cls'], atol=TOL, rtol=0)
  np.testing.assert_allclose(tokens[:, 1:], feats['patch_tokens'], atol=TOL, rtol=0)
  np.testing.assert_allclose(pre_logits, feats['cls'], atol=TOL, rtol=0)
  back = interop.load(dst, 'timm', num_heads=4)
  assert back.spec.pos_embed == 'sincos'
  jax.tree.map(np.testing.assert_array_equal, back.params, ckpt.encoder_only().params)


def test_position_table_resize_matches_torch_bicubic():
  rng = np.random.default_rng(0)
  table = rng.standard_normal((1, 1 + 4 * 4, 8)).astype(np.float32)
  for new in [(6, 6), (7, 5), (3, 3)]:
    ours = resize_pos_embed(table, (4, 4), new)
    grid = torch.from_numpy(table[:, 1:].reshape(1, 4, 4, 8)).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid, size=new, mode='bicubic', align_corners=False)
    ref = ref.permute(0, 2, 3, 1).reshape(1, -1, 8).numpy()
    np.testing.assert_allclose(ours[:, 1:], ref, atol=1e-6, rtol=1e-6)  # torch resamples in float32
    np.testing.assert_array_equal(ours[:, :1], table[:, :1])


def test_timm_at_higher_resolution_after_resize(tmp_path):
  """timm model at 32px -> mim_jax resized to 48px == a timm 48px model given the same resized table."""
  timm = _timm()
  model = _timm_model('token')
  ckpt = interop.resize(interop.load(write_tensors(str(tmp_path / 'm.safetensors'), _state(model)), 'timm',
                                     num_heads=4), (48, 48))
  assert ckpt.params['encoder']['pos_embed'].shape == (1, 1 + 36, 64)
  dst = str(tmp_path / 'm48.safetensors')
  interop.save(ckpt, dst, 'timm')
  from safetensors.torch import load_file
  big = timm.create_model('vit_base_patch16_224', pretrained=False, **timm_model_kwargs(ckpt.spec)).eval()
  big.load_state_dict(load_file(dst), strict=True)
  images = _images(2, size=48, seed=1)
  tokens, _, _ = _timm_forward(big, images)
  feats = mim_features(ckpt, images)
  np.testing.assert_allclose(feats['patch_tokens'], tokens[:, 1:], atol=TOL, rtol=0)
  with pytest.raises(ValueError, match='resize the checkpoint'):
    mim_features(ckpt, _images(1, size=32))


# ---------------------------------------------------------------- Hugging Face ViTMAE


def _hf_config(**kw):
  transformers = _transformers()
  base = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, image_size=32,
              patch_size=8, num_channels=3, decoder_hidden_size=32, decoder_num_hidden_layers=2,
              decoder_num_attention_heads=4, decoder_intermediate_size=128, layer_norm_eps=1e-6, mask_ratio=0.75,
              norm_pix_loss=True)
  base.update(kw)
  return transformers.ViTMAEConfig(**base)


def _hf_pretraining_model(seed=0, **kw):
  transformers = _transformers()
  torch.manual_seed(seed)
  model = transformers.ViTMAEForPreTraining(_hf_config(**kw)).eval()
  _randomize(model)
  with torch.no_grad():
    # Published ViTMAE checkpoints hold MAE's fixed sin-cos tables (a fresh model in transformers 5 holds zeros).
    model.vit.embeddings.position_embeddings.copy_(torch.from_numpy(sincos_with_cls(64, (4, 4))))
    model.decoder.decoder_pos_embed.copy_(torch.from_numpy(sincos_with_cls(32, (4, 4))))
  return model


def _hf_forward(model, images, noise):
  with torch.no_grad():
    out = model(pixel_values=_nchw(images), noise=torch.from_numpy(noise))
  return {'loss': out.loss.numpy(), 'pred': out.logits.numpy(), 'mask': out.mask.numpy(),
          'ids_restore': out.ids_restore.numpy()}


def _our_mae(ckpt, images, noise, mask_ratio=0.75):
  from mim_jax.methods import build

  method = build(ckpt.spec.mae_config(mask_ratio), images.shape[1:])
  info = method.masker.from_noise(jnp.asarray(noise))
  with jax.default_matmul_precision('highest'):
    out = jax.jit(method.forward)(jax.tree.map(jnp.asarray, ckpt.params), jnp.asarray(images), info)
  return {'loss': np.asarray(out['loss']), 'pred': np.asarray(out['pred']), 'mask': np.asarray(info.mask),
          'ids_restore': np.asarray(info.ids_restore), 'latent': np.asarray(out['latent'])}


@pytest.mark.parametrize('norm_pix_loss', [True, False])
def test_hf_vitmae_pretraining_matches_with_fixed_noise(tmp_path, norm_pix_loss):
  transformers = _transformers()
  model = _hf_pretraining_model(norm_pix_loss=norm_pix_loss)
  images = _images(4)
  noise = np.random.default_rng(1).random((4, 16)).astype(np.float32)
  ref = _hf_forward(model, images, noise)

  src = tmp_path / 'hf_src'
  model.save_pretrained(str(src))  # transformers' own writer (transformers-5 key names)
  ckpt = interop.load(str(src), 'hf_vitmae')
  assert ckpt.spec.decoder is not None and ckpt.spec.pos_embed == 'sincos'
  # The live module's state_dict (transformers-5 names) reads into the same params.
  from mim_jax.interop.hf_vitmae import from_hf
  jax.tree.map(np.testing.assert_array_equal, from_hf(_state(model), model.config.to_dict()).params, ckpt.params)
  assert ckpt.spec.norm_pix_loss is norm_pix_loss
  ours = _our_mae(ckpt, images, noise)
  np.testing.assert_array_equal(ours['mask'], ref['mask'])
  np.testing.assert_array_equal(ours['ids_restore'], ref['ids_restore'])
  np.testing.assert_allclose(ours['loss'], ref['loss'], rtol=1e-5, atol=0)
  np.testing.assert_allclose(ours['pred'], ref['pred'], atol=TOL, rtol=0)

  # Export back (hub key names) and let transformers load it: same outputs as the original model.
  dst = tmp_path / 'hf_back'
  interop.save(ckpt, str(dst), 'hf_vitmae')
  back = transformers.ViTMAEForPreTraining.from_pretrained(str(dst)).eval()
  again = _hf_forward(back, images, noise)
  for key in ref:
    np.testing.assert_array_equal(again[key], ref[key])


def test_hf_encoder_export_gives_mim_jax_features(tmp_path):
  """mim_jax encoder -> HF directory -> ViTMAEModel.from_pretrained: same tokens (mask_ratio 0, ordered noise)."""
  transformers = _transformers()
  ckpt = _mim_checkpoint().encoder_only()
  images = _images()
  feats = mim_features(ckpt, images)
  dst = tmp_path / 'hf_enc'
  interop.save(ckpt, str(dst), 'hf_vitmae')
  model = transformers.ViTMAEModel.from_pretrained(str(dst)).eval()
  assert model.config.mask_ratio == 0.0
  with torch.no_grad():
    out = model(pixel_values=_nchw(images), noise=torch.arange(16, dtype=torch.float32).expand(3, 16))
  hidden = out.last_hidden_state.numpy()
  np.testing.assert_allclose(hidden[:, 0], feats['cls'], atol=TOL, rtol=0)
  np.testing.assert_allclose(hidden[:, 1:], feats['patch_tokens'], atol=TOL, rtol=0)
  # and back into mim_jax, bit for bit
  back = interop.load(str(dst), 'hf_vitmae')
  jax.tree.map(np.testing.assert_array_equal, back.params, ckpt.params)


def test_hf_encoder_from_pretraining_checkpoint(tmp_path):
  """ViTMAEModel.from_pretrained on an exported *pre-training* directory picks the encoder out of it."""
  transformers = _transformers()
  ckpt = _mim_checkpoint()
  dst = tmp_path / 'hf_pre'
  interop.save(ckpt, str(dst), 'hf_vitmae', hf_mask_ratio=0.0)
  model = transformers.ViTMAEModel.from_pretrained(str(dst)).eval()
  images = _images(2)
  with torch.no_grad():
    out = model(pixel_values=_nchw(images), noise=torch.arange(16, dtype=torch.float32).expand(2, 16))
  feats = mim_features(ckpt, images)
  np.testing.assert_allclose(out.last_hidden_state.numpy()[:, 1:], feats['patch_tokens'], atol=TOL, rtol=0)


def test_official_pth_round_trip(tmp_path):
  ckpt = _mim_checkpoint()
  dst = str(tmp_path / 'mae.pth')
  interop.save(ckpt, dst, 'mae_official')
  raw = torch.load(dst, weights_only=True)
  assert set(raw) == {'model'} and 'decoder_pred.weight' in raw['model']  # the released files' layout
  back = interop.load(dst, 'mae_official', num_heads=4, decoder_num_heads=4)
  jax.tree.map(np.testing.assert_array_equal, back.params, ckpt.params)


def _mim_checkpoint(seed=0):
  """A tiny mim_jax MAE (sin-cos positions, with decoder), every parameter random."""
  spec = interop.ModelSpec(patch_size=8, width=64, depth=2, num_heads=4, image_size=(32, 32),
                           decoder=interop.DecoderSpec(width=32, depth=2, num_heads=4), norm_pix_loss=True)
  ckpt = random_checkpoint(spec, seed)
  return ckpt
