"""The ViT's block options (RMSNorm, SwiGLU, RoPE-1D, CLS last, q/v bias, iLLaMA's soft causal mask): each one does
what it says, each is off by default, and the default model is MAE's (whose parity tests are unchanged). Tensor
parity with the official iLLaMA at three soft-mask rates: tests/test_parity.py (official_illama/)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mim_jax import methods
from mim_jax.models import rope
from mim_jax.models.classifier import Classifier
from mim_jax.models.encoders import build_encoder
from mim_jax.models.vit import (Attention, RMSNorm, ViTEncoder, soft_causal_mask, soft_mask_schedule, swiglu_hidden,
                                variant_options)

ILLAMA = dict(patch_size=4, width=32, depth=2, num_heads=2, class_token='last', pos_embed='learned', rope='1d',
              norm='rmsnorm', mlp='swiglu', causal_mask='soft', swiglu_multiple_of=32)


def _images(n=2, size=16, seed=0):
  return jax.random.normal(jax.random.key(seed), (n, size, size, 3))


def test_default_options_build_mae_vit_parameters():
  enc = ViTEncoder(patch_size=4, width=32, depth=1, num_heads=2)
  params = nn.meta.unbox(enc.init(jax.random.key(0), _images())['params'])
  block = params['blocks_0']
  assert set(block) == {'norm1', 'attn', 'norm2', 'mlp'}
  assert set(block['attn']['qkv']) == {'kernel', 'bias'} and set(block['mlp']) == {'fc1', 'fc2'}
  assert set(block['norm1']) == {'scale', 'bias'}  # LayerNorm
  assert 'pos_embed' not in params and 'cls_token' in params


def test_rmsnorm_matches_its_formula_in_float32():
  x = jax.random.normal(jax.random.key(0), (3, 5, 8)) * 3 + 1
  norm = RMSNorm()
  params = {'scale': jnp.linspace(0.5, 1.5, 8)}
  y = norm.apply({'params': params}, x)
  ref = x / np.sqrt(np.mean(np.square(np.asarray(x)), -1, keepdims=True) + 1e-6) * np.asarray(params['scale'])
  np.testing.assert_allclose(y, ref, rtol=1e-5)
  yb = RMSNorm(dtype=jnp.bfloat16).apply({'params': params}, x.astype(jnp.bfloat16))
  assert yb.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(yb, np.float32), ref, rtol=2e-2, atol=2e-2)


def test_swiglu_hidden_size_is_llamas_rounding():
  assert [swiglu_hidden(d, 4.0) for d in (192, 384, 768, 1024, 32)] == [512, 1024, 2048, 2816, 256]
  enc = ViTEncoder(patch_size=4, width=48, depth=1, num_heads=2, mlp='swiglu')
  mlp = nn.meta.unbox(enc.init(jax.random.key(0), _images())['params'])['blocks_0']['mlp']
  assert set(mlp) == {'fc1', 'fc2', 'fc3'} and all(set(v) == {'kernel'} for v in mlp.values())  # no biases
  assert mlp['fc1']['kernel'].shape == (48, 256) and mlp['fc2']['kernel'].shape == (256, 48)


def test_qv_bias_has_no_key_bias():
  enc = ViTEncoder(patch_size=4, width=32, depth=1, num_heads=2, qkv_bias='qv')
  x = _images()
  params = nn.meta.unbox(enc.init(jax.random.key(0), x)['params'])
  attn = params['blocks_0']['attn']
  assert set(attn['qkv']) == {'kernel'} and set(attn) >= {'q_bias', 'v_bias'}
  # A key bias only shifts each query's logits by a constant: its gradient is zero; q and v biases matter.
  perturbed = jax.tree.map(lambda a: a, params)
  perturbed['blocks_0']['attn']['v_bias'] = attn['v_bias'] + 0.5
  assert not np.allclose(enc.apply({'params': perturbed}, x)['tokens'], enc.apply({'params': params}, x)['tokens'])
  none = ViTEncoder(patch_size=4, width=32, depth=1, num_heads=2, qkv_bias='none')
  assert set(nn.meta.unbox(none.init(jax.random.key(0), x)['params'])['blocks_0']['attn']['qkv']) == {'kernel'}


def test_rope_1d_is_relative_and_pairs_adjacent_channels():
  q, k = jax.random.normal(jax.random.key(0), (2, 1, 1, 1, 8))
  def dot(pq, pk):
    table = rope.rope_1d_table(jnp.array([[pq, pk]]), 8)
    return float(jnp.sum(rope.apply_rope(q, table[:, :1], 'interleaved') * rope.apply_rope(k, table[:, 1:],
                                                                                             'interleaved')))
  assert dot(7, 3) == pytest.approx(dot(14, 10), rel=1e-5)
  assert dot(7, 3) != pytest.approx(dot(7, 4), rel=1e-3)
  # LLaMA's complex form: channels (2i, 2i+1) are one complex number times exp(i pos theta_i).
  pos = 5
  z = np.asarray(q).reshape(-1, 2)
  theta = 1.0 / 10000 ** (np.arange(0, 8, 2) / 8)
  ref = (z[:, 0] + 1j * z[:, 1]) * np.exp(1j * pos * theta)
  out = np.asarray(rope.apply_rope(q, rope.rope_1d_table(jnp.array([[pos]]), 8), 'interleaved')).reshape(-1, 2)
  np.testing.assert_allclose(out[:, 0] + 1j * out[:, 1], ref, rtol=1e-5, atol=1e-6)


def test_cls_last_and_its_positions():
  enc = ViTEncoder(**{**ILLAMA, 'causal_mask': 'none'})
  x = _images()
  params = nn.meta.unbox(enc.init(jax.random.key(0), x)['params'])
  assert params['pos_embed'].shape == (1, 17, 32)
  out = enc.apply({'params': params}, x)
  np.testing.assert_array_equal(out['cls'], out['tokens'][:, -1])
  np.testing.assert_array_equal(out['patch_tokens'], out['tokens'][:, :-1])
  # The CLS token's rotary position is num_patches (after the patches), whatever subset of patches is kept.
  table = enc.rope_table(4, 4, jnp.array([[3, 0, 9]]))
  np.testing.assert_allclose(table, rope.rope_1d_table(jnp.array([[3, 0, 9, 16]]), 16))
  first = enc.clone(class_token='first').rope_table(4, 4, jnp.array([[3, 0, 9]]))
  np.testing.assert_allclose(first, rope.rope_1d_table(jnp.array([[0, 4, 1, 10]]), 16))


def test_soft_causal_mask_values():
  np.testing.assert_allclose(soft_causal_mask(3, 0.0), np.tril(np.ones((3, 3))))
  np.testing.assert_allclose(soft_causal_mask(3, 1.0), np.ones((3, 3)))
  np.testing.assert_allclose(soft_causal_mask(3, 0.3), [[1, 0.3, 0.3], [1, 1, 0.3], [1, 1, 1]], rtol=1e-6)


def test_rate_zero_masks_later_tokens_after_the_softmax_and_rate_one_is_full_attention():
  """At rate 0 no weight falls on a later token, but the official mask acts *after* the softmax without
  renormalizing, so a later token still enters each earlier row's normalizer: perturbing token j rescales the
  outputs of tokens i < j (one scalar per row and head) instead of leaving them unchanged. This is the official
  model's behaviour (tests/test_parity.py at rate 0); a -inf mask before the softmax would be strictly causal."""
  attn = Attention(num_heads=1, attention_impl='einsum')
  x = jax.random.normal(jax.random.key(0), (2, 6, 8))
  params = nn.meta.unbox(attn.init(jax.random.key(1), x, soft_causal=jnp.float32(0.0))['params'])
  j = 4
  y = x.at[:, j].add(1.0)
  a, b = (attn.apply({'params': params}, t, soft_causal=jnp.float32(0.0)) - params['proj']['bias'] for t in (x, y))
  cos = np.sum(a[:, :j] * b[:, :j], -1) / np.linalg.norm(a[:, :j], axis=-1) / np.linalg.norm(b[:, :j], axis=-1)
  np.testing.assert_allclose(cos, 1.0, atol=1e-5)  # only rescaled: no value of a later token gets in
  assert not np.allclose(a[:, :j], b[:, :j], atol=1e-4)  # but rescaled: the normalizer sees token j
  # The values of later tokens carry no weight: with their keys fixed, changing only their values changes nothing.
  def with_values(t, v_shift):
    qkv = t @ params['qkv']['kernel'] + params['qkv']['bias']
    q, k, v = jnp.split(qkv, 3, -1)
    v = v.at[:, j:].add(v_shift)
    w = jax.nn.softmax(jnp.einsum('bqd,bkd->bqk', q * 8 ** -0.5, k), -1) * soft_causal_mask(6, 0.0)
    return jnp.einsum('bqk,bkd->bqd', w, v)
  np.testing.assert_allclose(with_values(x, 0.0)[:, :j], with_values(x, 3.0)[:, :j], atol=1e-6)

  enc = ViTEncoder(**ILLAMA)
  imgs = _images()
  p = nn.meta.unbox(enc.init(jax.random.key(0), imgs)['params'])
  full = enc.apply({'params': p}, imgs, soft_mask_rate=1.0)['tokens']
  bidirectional = enc.clone(causal_mask='none', attention_impl='einsum').apply({'params': p}, imgs)['tokens']
  np.testing.assert_allclose(full, bidirectional, atol=1e-6)
  causal = enc.apply({'params': p}, imgs, soft_mask_rate=0.0)['tokens']
  assert not np.allclose(causal, full, atol=1e-3)


def test_the_rate_is_traced_so_a_schedule_compiles_once():
  enc = ViTEncoder(**ILLAMA)
  x = _images()
  params = nn.meta.unbox(enc.init(jax.random.key(0), x)['params'])
  fn = jax.jit(lambda p, r: enc.apply({'params': p}, x, soft_mask_rate=r)['cls'])
  outs = [fn(params, jnp.float32(r)) for r in (1.0, 0.5, 0.0)]
  assert fn._cache_size() == 1
  assert not np.allclose(outs[0], outs[2])
  schedule = soft_mask_schedule(1.0, 4, 'constant')
  assert [float(schedule(s)) for s in range(6)] == [1, 1, 1, 1, 0, 0]
  ramp = soft_mask_schedule(1.0, 5, 'linear')
  np.testing.assert_allclose([float(ramp(s)) for s in range(6)], [*np.linspace(1, 0, 5), 0])


def test_other_attention_kernels_fall_back_to_einsum_with_the_reason(capsys):
  enc = ViTEncoder(**ILLAMA, attention_impl='einsum')
  x = _images()
  params = nn.meta.unbox(enc.init(jax.random.key(0), x)['params'])
  ref = enc.apply({'params': params}, x, soft_mask_rate=0.3)['tokens']
  for impl in ('auto', 'cpu_fused', 'xla'):
    out = enc.clone(attention_impl=impl).apply({'params': params}, x, soft_mask_rate=0.3)['tokens']
    np.testing.assert_allclose(out, ref, atol=1e-6)
  printed = capsys.readouterr().out
  assert "attention_impl='xla' cannot multiply" in printed and "'auto'" not in printed  # 'auto' picks silently


def test_option_errors_are_one_line_and_name_the_fix():
  x = _images()
  with pytest.raises(ValueError, match='norm must be one of'):
    ViTEncoder(patch_size=4, width=32, depth=1, num_heads=2, norm='batchnorm').init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="causal_mask='none'"):  # a causal mask over MAE's shuffled visible tokens
    ViTEncoder(**ILLAMA).init(jax.random.key(0), x, ids_keep=jnp.array([[3, 1], [0, 2]]))
  with pytest.raises(ValueError, match="set causal_mask='soft'"):
    ViTEncoder(patch_size=4, width=32, depth=1, num_heads=2).init(jax.random.key(0), x, soft_mask_rate=0.5)
  with pytest.raises(ValueError, match='needs a CLS token'):
    ViTEncoder(patch_size=4, width=32, depth=1, num_heads=2, class_token='none', pos_embed='learned').init(
        jax.random.key(0), x)


def test_illama_variants_and_config_overrides():
  enc = build_encoder({'variant': 'illama_tiny/16'})
  assert (enc.width, enc.depth, enc.num_heads) == (192, 12, 3)
  assert {k: getattr(enc, k) for k in variant_options('illama_tiny/16')} == variant_options('illama_tiny/16')
  assert build_encoder({'variant': 'illama_base/16', 'causal_mask': 'none'}).causal_mask == 'none'
  assert variant_options('base/16') == {}


def _mae_config(**encoder):
  c = ml_collections.ConfigDict({
      'method': 'mae', 'norm_pix_loss': True,
      'model': {'encoder': {'patch_size': 4, 'width': 32, 'depth': 1, 'num_heads': 2, **encoder},
                'decoder': {'width': 16, 'depth': 1, 'num_heads': 2}},
      'mask': {'name': 'random', 'ratio': 0.75}})
  return c


def test_illama_blocks_as_an_mae_encoder():
  opts = {k: v for k, v in ILLAMA.items() if k not in ('patch_size', 'width', 'depth', 'num_heads')}
  facts = methods.Facts.for_images((16, 16, 3))
  mae = methods.build(_mae_config(**{**opts, 'causal_mask': 'none'}), facts)
  batch = {'image': _images()}
  params, extras = mae.init(jax.random.key(0), batch)
  loss, _ = mae.loss_fn(params, extras, batch, jax.random.key(1), 0)
  assert np.isfinite(float(loss))
  # CLS last: the decoder still gets it first (the same numbers as a CLS-first layout of the same tokens).
  info = mae.masker(jax.random.key(2), 2)
  out = mae.encoder.apply({'params': params['encoder']}, batch['image'], ids_keep=info.ids_keep)
  latent, _ = mae.model.apply({'params': params}, batch['image'], info)
  np.testing.assert_array_equal(latent[:, 0], out['cls'])
  with pytest.raises(ValueError, match="causal_mask='none'"):
    soft = methods.build(_mae_config(**opts), facts)
    soft.init(jax.random.key(0), batch)
  dmae = _mae_config(class_token='last')
  dmae.method = 'dmae'
  with pytest.raises(ValueError, match=r"class_token in \('first',\)"):
    methods.build(dmae, facts)


def test_classifier_reads_the_last_token_and_passes_the_rate():
  enc = ViTEncoder(**ILLAMA)
  model = Classifier(enc, num_classes=5, global_pool=False)
  x = _images()
  params = nn.meta.unbox(model.init(jax.random.key(0), x, soft_mask_rate=1.0)['params'])
  logits = model.apply({'params': params}, x, soft_mask_rate=0.0)
  cls = enc.apply({'params': params['encoder']}, x, soft_mask_rate=0.0)['cls']
  np.testing.assert_allclose(logits, cls @ params['head']['kernel'] + params['head']['bias'], rtol=1e-5,
                             atol=1e-6)
  assert not np.allclose(logits, model.apply({'params': params}, x, soft_mask_rate=1.0))
