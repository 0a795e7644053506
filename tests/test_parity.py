"""Parity with the official implementations: every committed fixture passes `python -m mim_jax.interop.parity`,
and a changed number makes it fail and name the tensor."""

import json

import numpy as np
import pytest

from conftest import FIXTURE_ROOT, FIXTURES
from mim_jax.interop import parity
from mim_jax.interop.official_mae import from_official, to_official

# Every fixture CI must check: a missing file fails the first test instead of silently shrinking the parametrization.
EXPECTED = {
    'official_cae/cae_official_tiny.npz': 'cae',
    'official_cae/cae_official_tiny_projected.npz': 'cae',
    'official_croco/croco_official_tiny.npz': 'croco',
    'official_croco/croco_official_tiny_rope.npz': 'croco',
    'official_croco/croco_official_tiny_wide.npz': 'croco',
    'official_cropmae/cropmae_official_tiny.npz': 'cropmae',
    'official_cropmae/cropmae_official_tiny_wide.npz': 'cropmae',
    'official_colormae/colormae_official_full.npz': 'colormae_mask',
    'official_colormae/colormae_official_residual.npz': 'colormae_mask',
    'official_illama/illama_official_rate0.npz': 'illama',
    'official_illama/illama_official_rate03.npz': 'illama',
    'official_illama/illama_official_rate03_wide.npz': 'illama',
    'official_illama/illama_official_rate1.npz': 'illama',
    'official_mae/mae_official_tiny_normpix.npz': 'mae',
    'official_mae/mae_official_tiny_pix.npz': 'mae',
    'official_dmae/dmae_official_tiny.npz': 'dmae',
    'official_dmae/dmae_official_tiny_two_pairs.npz': 'dmae',
    'official_maskalign/maskalign_official_tiny_linear.npz': 'maskalign',
    'official_maskalign/maskalign_official_tiny_simple.npz': 'maskalign',
    'official_maskalign/maskalign_official_tiny_sum.npz': 'maskalign',
    'official_hpm/hpm_official_tiny_normpix.npz': 'hpm',
    'official_hpm/hpm_official_tiny_pix.npz': 'hpm',
    'official_simmim/simmim_official_tiny_p4.npz': 'simmim',
    'official_spark/spark_official_convnext_64.npz': 'spark',
    'official_spark/spark_official_resnet18_64.npz': 'spark',
    'official_spark/spark_official_resnet_small.npz': 'spark',
    'official_simmim/simmim_official_tiny_p4_grid6.npz': 'simmim',
    'official_pointmae/pointmae_official_tiny.npz': 'point_mae',
    'official_multimae/multimae_official_tiny.npz': 'multimae',
    'official_videomae/videomae_official_v1_tiny.npz': 'videomae',
    'official_videomae/videomae_official_v2_tiny.npz': 'videomae',
    'timm_convnets/convnext_atto.npz': 'timm_convnext',
    'timm_convnets/convnext_p2.npz': 'timm_convnext',
    'timm_convnets/convnext_p2_s1.npz': 'timm_convnext',
    'timm_convnets/convnext_tiny.npz': 'timm_convnext',
    'timm_convnets/resnet18.npz': 'timm_resnet',
    'timm_convnets/resnet18_small.npz': 'timm_resnet',
    'timm_convnets/resnet50.npz': 'timm_resnet',
}
# What each method's check must cover (a fixture without these outputs would prove less).
REQUIRED = {
    'cae': ('logits', 'latent_predict', 'latent_target', 'loss_main', 'loss_align', 'loss', 'grad/mask_token',
            'grad/encoder.blocks.0.attn.q_bias', 'grad/encoder.blocks.0.gamma_1',
            'grad/regresser.regressor_blocks.0.cross_attn.k.weight', 'grad/decoder.head.weight',
            'grad/encoder/blocks_0/attn/qkv/bias.k_part (zero)'),
    'illama': ('features (final RMSNorm, last token)', 'logits', 'loss', 'grad/cls_token', 'grad/pos_embed',
               'grad/blocks.0.mlp.fc3.weight', 'grad/blocks.0.norm1.weight', 'grad/head.weight'),
    'colormae_mask': ('len_keep', 'window', 'mask', 'ids_keep', 'ids_restore'),
    'dmae': ('mask', 'ids_restore', 'ids_keep', 'teacher_hidden/0', 'pred', 'pix_loss', 'distill/0', 'loss',
             'grad/aligned_feature_projection_heads.0.weight', 'grad/blocks.0.attn.qkv.weight',
             'grad/decoder_pred.weight'),
    'maskalign': ('ids_keep', 'teacher_cls_attention', 'loss', 'grad/cls_token', 'grad/blocks.0.attn.qkv.weight',
                  'grad/patch_embed.proj.weight'),
    'mae': ('len_keep', 'mask', 'ids_restore', 'loss', 'latent', 'pred', 'grad/patch_embed.proj.weight',
            'grad/blocks.0.attn.qkv.weight', 'grad/decoder_pred.weight', 'grad/cls_token', 'grad/mask_token'),
    'simmim': ('mask', 'z', 'x_rec', 'loss', 'grad/encoder.patch_embed.proj.weight', 'grad/encoder.pos_embed',
               'grad/encoder.mask_token', 'grad/encoder.blocks.0.attn.q_bias', 'grad/encoder.blocks.0.attn.v_bias',
               'grad/encoder.blocks.0.attn.k_bias (zero)', 'grad/decoder.0.weight'),
    'timm_resnet': ('stage0', 'stage1', 'stage2', 'stage3', 'pooled', 'logits', 'train/stage3', 'train/logits',
                    'train/bn1.running_mean', 'train/layer1.0.bn1.running_var', 'train/layer4.1.bn2.running_var'),
    'timm_convnext': ('stage0', 'stage1', 'stage2', 'stage3', 'pooled', 'logits'),
    'spark': ('feat0', 'feat3', 'to_dec0', 'to_dec2', 'rec_bchw', 'loss',
              'after/dense_decoder.dec.0.conv.4.running_var', 'after/dense_decoder.dec.0.conv.1.running_mean',
              'grad/mask_tokens.0', 'grad/dense_decoder.proj.weight', 'grad/dense_decoder.dec.0.up_sample.weight'),
    'point_mae': ('center (FPS)', 'neighborhood (kNN)', 'x_vis', 'rebuild', 'loss',
                  'after/MAE_encoder.encoder.second_conv.1.running_var', 'grad/mask_token',
                  'grad/MAE_encoder.encoder.second_conv.0.weight', 'grad/MAE_encoder.pos_embed.0.weight',
                  'grad/MAE_encoder.blocks.blocks.0.attn.qkv.weight', 'grad/decoder_pos_embed.2.weight',
                  'grad/MAE_decoder.blocks.1.mlp.fc2.weight', 'grad/increase_dim.0.weight'),
    'multimae': ('visible tokens', 'input_adapters.rgb.pos_emb', 'output_adapters.semseg.pos_emb', 'pred/rgb',
                 'pred/depth', 'pred/semseg', 'pred/norm_rgb', 'loss/rgb', 'loss/depth', 'loss/semseg',
                 'loss/norm_rgb', 'loss', 'grad/global_tokens', 'grad/input_adapters.semseg.class_emb.weight',
                 'grad/input_adapters.rgb.proj.weight', 'grad/encoder.1.attn.qkv.weight',
                 'grad/output_adapters.depth.decoder.kv.weight', 'grad/output_adapters.semseg.task_embeddings.rgb',
                 'grad/output_adapters.norm_rgb.decoder_transformer.0.mlp.fc2.weight',
                 'grad/output_adapters.rgb.mask_token', 'grad/output_adapters.rgb.proj_context.weight'),
    'videomae': ('tube count per frame', 'tube constant over time', 'position table', 'encoder_tokens', 'labels',
                 'pred', 'loss', 'grad/encoder.patch_embed.proj.weight', 'grad/encoder.blocks.0.attn.q_bias',
                 'grad/encoder.blocks.0.attn.v_bias', 'grad/encoder_to_decoder.weight', 'grad/mask_token',
                 'grad/decoder.blocks.1.attn.qkv.weight', 'grad/decoder.head.weight'),
    'hpm': ('teacher_loss_pred', 'mask', "mask (from mim_jax's own teacher prediction)", 'latent', 'pix_pred',
            'loss_pred', 'recon_loss', 'rank_loss', 'loss', 'grad/decoder_embed.weight', 'grad/mask_token',
            'grad/decoder_blocks_losspred.0.attn.qkv.weight', 'grad/decoder_pred_losspred.weight',
            'grad/blocks.0.mlp.fc1.weight'),
}


def test_every_fixture_is_in_the_repository():
  found = sorted(str(p.relative_to(FIXTURE_ROOT)) for p in FIXTURE_ROOT.glob('*/*.npz'))
  assert found == sorted(EXPECTED), f'fixtures under {FIXTURE_ROOT}: {found}'


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_parity_with_the_official_code(name):
  path = str(FIXTURE_ROOT / name)
  assert parity.load(path).method == EXPECTED[name]
  checks = parity.check_file(path)
  names = {c.name for c in checks}
  assert not [r for r in REQUIRED.get(EXPECTED[name], ()) if r not in names]
  bad = [f'{c.name}: {c.max_abs:.3e} > {c.tolerance:.3e}' for c in checks if not c.ok]
  assert not bad, bad


def _rewrite(src, dst, change):
  z = dict(np.load(src, allow_pickle=False))
  change(z)
  with open(dst, 'wb') as f:
    np.savez(f, **z)
  return str(dst)


# One method in the default suite; the others repeat the same mechanism (pytest -m slow runs them).
@pytest.mark.parametrize('name, key', [
    ('official_mae/mae_official_tiny_pix.npz', 'param/blocks.1.mlp.fc2.weight'),
    pytest.param('official_simmim/simmim_official_tiny_p4.npz', 'param/encoder.blocks.0.attn.v_bias',
                 marks=pytest.mark.slow),
    pytest.param('official_hpm/hpm_official_tiny_pix.npz', 'param/decoder_blocks_losspred.0.mlp.fc1.weight',
                 marks=pytest.mark.slow),
    pytest.param('official_dmae/dmae_official_tiny.npz', 'param/aligned_feature_projection_heads.0.weight',
                 marks=pytest.mark.slow),
    pytest.param('official_maskalign/maskalign_official_tiny_linear.npz', 'param/distill_heads.2.weight',
                 marks=pytest.mark.slow),
    pytest.param('official_cae/cae_official_tiny.npz', 'param/regresser.regressor_blocks.1.gamma_2_cross',
                 marks=pytest.mark.slow),
])
def test_a_perturbed_weight_fails_and_names_the_tensors(name, key, tmp_path, capsys):
  def change(z):
    z[key] = z[key].copy()
    z[key].flat[0] += 0.05

  bad = _rewrite(FIXTURE_ROOT / name, tmp_path / 'bad.npz', change)
  assert parity.main([bad]) == 1
  out = capsys.readouterr().out
  assert 'FAILED: ' in out
  failed = out.split('FAILED: ', 1)[1].splitlines()[0].split(', ')
  outputs = [f for f in failed if not f.startswith('grad/')]
  assert outputs and len(outputs) < len(failed), failed  # forward outputs and gradients both named
  assert any(line.startswith(f'  FAIL {outputs[0]} ') for line in out.splitlines())


@pytest.mark.parametrize('key', ['draw/crop_top', 'draw/horizontal_flip'])
def test_a_changed_colormae_draw_fails(key, tmp_path, capsys):
  # The 'residual' set flips horizontally only: a mim_jax that confused the two flips (or shifted the crop) fails.
  def change(z):
    z[key] = np.logical_not(z[key]) if z[key].dtype == bool else z[key] + 1

  bad = _rewrite(FIXTURE_ROOT / 'official_colormae/colormae_official_residual.npz', tmp_path / 'bad.npz', change)
  assert parity.main([bad]) == 1
  assert 'FAILED: window, mask, ids_keep, ids_restore' in capsys.readouterr().out


@pytest.mark.slow
def test_a_perturbed_teacher_weight_fails_dmae(tmp_path, capsys):
  def change(z):
    key = 'input/teacher/blocks.1.attn.proj.weight'
    z[key] = z[key].copy()
    z[key].flat[0] += 0.05

  bad = _rewrite(FIXTURE_ROOT / 'official_dmae/dmae_official_tiny.npz', tmp_path / 'bad.npz', change)
  assert parity.main([bad]) == 1
  assert 'FAILED: teacher_hidden/0, distill/0, loss' in capsys.readouterr().out


def test_exit_codes_and_errors(tmp_path, capsys):
  good = str(FIXTURE_ROOT / 'official_mae/mae_official_tiny_pix.npz')
  assert parity.main([good]) == 0
  not_npz = tmp_path / 'notes.npz'
  not_npz.write_text('hello')
  unknown = _rewrite(good, tmp_path / 'unknown.npz',
                     lambda z: z.__setitem__('meta_json', np.asarray(json.dumps({'method': 'byol', 'config': {}}))))
  missing = _rewrite(good, tmp_path / 'missing.npz', lambda z: z.pop('draw/noise'))
  capsys.readouterr()
  assert parity.main([str(not_npz), unknown, missing]) == 1
  out = capsys.readouterr().out.splitlines()
  assert out[0].startswith(f'{not_npz}: cannot check: {not_npz}: cannot read it as an .npz file')
  assert "method 'byol' has no parity adapter" in out[1]
  assert 'needs draw/noise' in out[2]


def test_the_older_official_mae_layout_is_read(tmp_path):
  """Files in the shared/fixtures/official_mae layout (config_json, imgs, noise, ...) check like the new format."""
  fx = parity.load(str(FIXTURES / 'mae_official_tiny_normpix.npz'))
  official = fx.meta['official_hparams'] | {'norm_pix_loss': fx.config().norm_pix_loss}
  legacy = {'config_json': np.asarray(json.dumps(official)), 'imgs': fx.inputs['images'], 'noise': fx.draws['noise'],
            **{k: fx.outputs[k] for k in ('loss', 'pred', 'mask', 'ids_restore', 'latent', 'len_keep')},
            **{f'param/{k}': v for k, v in fx.params.items()}, **{f'grad/{k}': v for k, v in fx.grads.items()}}
  path = tmp_path / 'legacy.npz'
  np.savez(path, **legacy)
  again = parity.load(str(path))
  assert again.config() == fx.config() and again.meta['layout'].startswith('official_mae')
  checks = parity.check_file(str(path))
  assert len(checks) > 60 and all(c.ok for c in checks)


def test_official_state_dict_round_trip():
  fx = parity.load(str(FIXTURES / 'mae_official_tiny_normpix.npz'))
  params = from_official(fx.params)
  p = fx.config().model.encoder.patch_size
  side = fx.inputs['images'].shape[-1] // p
  back = to_official(params, patch_size=p, grid_hw=(side, side))
  assert sorted(back) == sorted(fx.params)
  for k, v in fx.params.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_simmim_state_dict_round_trip():
  from mim_jax.interop import official_simmim

  fx = parity.load(str(FIXTURE_ROOT / 'official_simmim/simmim_official_tiny_p4.npz'))
  back, k_bias = official_simmim.to_official(official_simmim.from_official(fx.params), patch_size=4)
  assert sorted(back) == sorted(fx.params)
  for k, v in fx.params.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)
  assert all(not v.any() for v in k_bias.values())
