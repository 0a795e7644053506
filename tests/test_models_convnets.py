"""ResNet / ConvNeXt encoders (mim_jax.models.convnets): parity with timm through the state-dict import, the feature
contract, BatchNorm statistics in ``batch_stats``, layer ids, config errors, drop path, bfloat16, sharding names."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FIXTURE_ROOT, run_python
from mim_jax.interop import parity, timm_convnets
from mim_jax.models.convnets import ConvNeXtEncoder, ResNetEncoder
from mim_jax.models.encoders import FEATURE_KEYS, build_encoder, encoder_names

FIXTURES = sorted((FIXTURE_ROOT / 'timm_convnets').glob('*.npz'))
SMALL_RESNET = dict(block='basic', depths=(1, 1, 1, 1), widths=(4, 8, 8, 16), stem_width=8)
SMALL_CONVNEXT = dict(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16))


def _init(model, shape, seed=0):
  """Random variables of the right shapes without running ``init`` (compiling the random initializers of every
  parameter takes ~30 s on two busy cores): He-scaled kernels, BN / LN scales near 1, positive variances,
  LayerScale gammas in [0.1, 0.5] (so that blocks and dropping them matter)."""
  abstract = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.ones(shape)))
  rng = np.random.default_rng(seed)

  def fill(path, a):
    name = path[-1].key
    if name == 'kernel':
      value = rng.standard_normal(a.shape) * np.sqrt(2.0 / np.prod(a.shape[:-1]))
    elif name == 'var':
      value = rng.uniform(0.5, 1.5, a.shape)
    elif name == 'scale':
      value = 1 + 0.1 * rng.standard_normal(a.shape)
    elif name == 'gamma':
      value = rng.uniform(0.1, 0.5, a.shape)
    else:
      value = 0.1 * rng.standard_normal(a.shape)
    return jnp.asarray(value, a.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def _apply(model, variables, images, **kwargs):
  """``model.apply`` jitted (eager applies dispatch op by op: several times slower on two cores)."""
  return jax.jit(lambda v, x: model.apply(v, x, **kwargs))(variables, images)


def test_fixtures_cover_every_structure():
  assert {p.stem for p in FIXTURES} == {'resnet18', 'resnet50', 'resnet18_small', 'convnext_atto', 'convnext_tiny',
                                        'convnext_p2', 'convnext_p2_s1'}
  assert sum(p.stat().st_size for p in FIXTURES) < 1_500_000


# Parity with every fixture (each stage, pooled, logits; ResNets' train mode and running statistics) is
# tests/test_parity.py. Tolerance: parity.activation, 1e-5 + 1e-4 * max|ref| per tensor (float32 kernels of two
# libraries round differently; observed errors are 1e-7..7e-6), and 1e-3 * max|ref| for train-mode maps (see
# mim_jax.interop.parity.timm_convnets.TRAIN_MAPS: timm's own float32 result is 1.4e-4 * max away from float64).
@pytest.mark.parametrize('name', ['resnet50.npz', 'convnext_atto.npz'])
def test_state_dict_round_trip_and_config_inference(name):
  fx = parity.load(str(FIXTURE_ROOT / 'timm_convnets' / name))
  enc = dict(fx.meta['config']['model']['encoder'])
  enc.pop('name')
  if fx.method == 'timm_resnet':
    w = timm_convnets.resnet_from_timm(fx.params)
    back = timm_convnets.resnet_to_timm(w.params, w.batch_stats, w.head)
    inferred = timm_convnets.resnet_config_from_timm(fx.params)
  else:
    w = timm_convnets.convnext_from_timm(fx.params)
    back = timm_convnets.convnext_to_timm(w.params, w.head, conv_mlp=True)
    inferred = timm_convnets.convnext_config_from_timm(fx.params)
    inferred.pop('layer_scale')
  assert {k: list(v) if isinstance(v, tuple) else v for k, v in inferred.items()} == enc
  assert set(back) == set(fx.params)
  for k, v in fx.params.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)
  # what the import returns is exactly the module's variable tree
  model = build_encoder({'name': fx.meta['config']['model']['encoder']['name'], **enc})
  ours = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 32, 32, 3))))
  assert jax.tree.map(np.shape, ours) == jax.tree.map(np.shape, w.variables)


def test_import_errors_name_the_keys():
  fx = parity.load(str(FIXTURE_ROOT / 'timm_convnets' / 'resnet18.npz'))
  state = {**fx.params, 'layer1.0.se.fc1.weight': np.zeros((2, 4, 1, 1), np.float32)}
  with pytest.raises(ValueError, match=r'layer1\.0\.se\.fc1\.weight'):
    timm_convnets.resnet_from_timm(state)
  assert timm_convnets.resnet_from_timm(fx.params, head=False).head is None
  assert timm_convnets.resnet_from_timm(fx.params).head['kernel'].shape == (24, 10)
  with pytest.raises(ValueError, match='stages.0.blocks.0.mlp.grn.weight'):
    timm_convnets.convnext_from_timm({'stem.0.weight': np.zeros((4, 3, 4, 4)),
                                      'stages.0.blocks.0.mlp.grn.weight': np.zeros(4)})


@pytest.mark.parametrize('model, size, maps', [
    (ResNetEncoder(**SMALL_RESNET), 64, [16, 8, 4, 2]),
    (ResNetEncoder(**SMALL_RESNET, stem='small'), 32, [32, 16, 8, 4]),
    (ResNetEncoder(block='bottleneck', depths=(1, 1, 1, 1), widths=(2, 4, 4, 8), stem_width=8), 32, [8, 4, 2, 1]),
    (ConvNeXtEncoder(**SMALL_CONVNEXT), 64, [16, 8, 4, 2]),
    (ConvNeXtEncoder(**SMALL_CONVNEXT, patch_size=2, stage0_stride=1), 28, [14, 7, 3, 1]),
], ids=['resnet_imagenet', 'resnet_small', 'resnet_bottleneck', 'convnext', 'convnext_p2_s1'])
def test_feature_contract(model, size, maps):
  images = jnp.ones((2, size, size, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  out = jax.eval_shape(lambda v: model.apply(v, images), variables)
  assert set(FEATURE_KEYS) | {'stages'} == set(out)
  assert out['cls'] is None
  assert [s.shape[1] for s in out['stages']] == maps
  c = out['stages'][-1].shape[-1]
  assert out['feature_map'].shape == (2, maps[-1], maps[-1], c)
  assert out['patch_tokens'].shape == out['tokens'].shape == (2, maps[-1] ** 2, c)
  assert out['pooled'].shape == (2, c)
  assert [(m, m) for m in maps] == model.feature_sizes(size, size)[1:]


def test_pooled_is_the_mean_of_the_last_map():
  model = ResNetEncoder(**SMALL_RESNET)
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  out = _apply(model, _init(model, images.shape), images)
  np.testing.assert_allclose(out['pooled'], out['patch_tokens'].mean(axis=1), rtol=1e-6, atol=1e-6)


def test_bad_inputs_are_clear_errors():
  model = ConvNeXtEncoder(**SMALL_CONVNEXT)
  with pytest.raises(ValueError, match=r'\[batch, height, width, channels\]'):
    model.init(jax.random.key(0), jnp.ones((32, 32, 3)))
  with pytest.raises(ValueError, match='too small'):
    model.init(jax.random.key(0), jnp.ones((1, 28, 28, 3)))


def test_batch_stats_are_not_params_and_a_train_forward_updates_them():
  model = ResNetEncoder(**SMALL_RESNET)
  images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  variables = _init(model, images.shape)
  assert set(variables) == {'params', 'batch_stats'}
  param_leaves = jax.tree_util.tree_flatten_with_path(variables['params'])[0]
  assert not [p for p, _ in param_leaves if any(getattr(k, 'key', '') in ('mean', 'var') for k in p)]
  assert set(variables['batch_stats']['stem_bn']) == {'mean', 'var'}
  assert set(variables['params']['stem_bn']) == {'scale', 'bias'}
  with pytest.raises(Exception, match='batch_stats'):
    model.apply(variables, images, deterministic=False)  # immutable collection
  out, updated = _apply(model, variables, images, deterministic=False, mutable=['batch_stats'])
  new = updated['batch_stats']['stem_bn']
  x = jax.lax.conv_general_dilated(images, variables['params']['stem_conv']['kernel'], (2, 2), ((3, 3), (3, 3)),
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision='highest')
  n = x.shape[0] * x.shape[1] * x.shape[2]
  old = variables['batch_stats']['stem_bn']
  # torch's update: momentum 0.1, the unbiased batch variance
  np.testing.assert_allclose(new['mean'], 0.9 * old['mean'] + 0.1 * x.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new['var'], 0.9 * old['var'] + 0.1 * x.var(axis=(0, 1, 2)) * n / (n - 1), rtol=1e-4,
                             atol=1e-6)
  # eval reads the running statistics: a different answer from the batch-statistics forward
  assert not np.allclose(_apply(model, variables, images)['pooled'], out['pooled'])


def test_layer_ids():
  for model in (ResNetEncoder(**SMALL_RESNET), ConvNeXtEncoder(**SMALL_CONVNEXT)):
    params = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 32, 32, 3))))['params']
    assert model.num_layers == 5
    ids = {}
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
      names = [k.key for k in path]
      ids.setdefault(names[0], set()).add(model.layer_id(names))
    assert ids.pop('stem_conv') == {0}
    assert ids.pop(next(k for k in list(ids) if k.startswith('stem_'))) == {0}
    assert {k: v for k, v in ids.items() if k.startswith('stages_')} == {f'stages_{s}': {s + 1} for s in range(4)}
    assert ids.get('head_norm', {5}) == {5}
    assert model.layer_id(['head', 'kernel']) == 5
    with pytest.raises(ValueError):
      model.layer_id(['stages_4', 'blocks_0'])


def test_from_config_and_registry():
  assert {'resnet', 'convnext', 'vit'} <= set(encoder_names())
  r = build_encoder({'name': 'resnet', 'variant': '50', 'widths': [16, 32, 64, 128], 'patch_size': None},
                    dtype=jnp.bfloat16, attention_impl='cudnn', remat='full')
  assert (r.block, r.depths, r.widths, r.dtype) == ('bottleneck', (3, 4, 6, 3), (16, 32, 64, 128), jnp.bfloat16)
  c = build_encoder({'name': 'convnext', 'variant': 'atto'})
  assert (c.depths, c.dims) == ((2, 2, 6, 2), (40, 80, 160, 320))
  assert build_encoder({'name': 'convnext', 'variant': 'tiny'}).dims == (96, 192, 384, 768)
  assert build_encoder({'name': 'resnet', 'variant': 18}).depths == (2, 2, 2, 2)
  for cfg, pattern in [({'name': 'resnet', 'variant': '18', 'width': 64}, r"unknown encoder setting\(s\) \['width'\]"),
                       ({'name': 'convnext', 'variant': 'huge'}, "unknown ConvNeXt variant 'huge'; known:"),
                       ({'name': 'resnet', 'variant': '19'}, "unknown ResNet variant '19'")]:
    with pytest.raises(ValueError, match=pattern) as e:
      build_encoder(cfg)
    assert '\n' not in str(e.value)
    assert 'known' in str(e.value)


def test_for_finetuning_and_drop_path():
  model = ConvNeXtEncoder(**SMALL_CONVNEXT).for_finetuning(drop_path=0.5, pooled=True, dtype=jnp.float32,
                                                           remat=False)
  resnet = ResNetEncoder(**SMALL_RESNET).for_finetuning(drop_path=0.5, pooled=True, dtype=jnp.bfloat16, remat='full')
  assert (model.drop_path, resnet.drop_path, resnet.dtype) == (0.5, 0.5, jnp.bfloat16)
  images = jax.random.normal(jax.random.key(2), (4, 32, 32, 3))
  variables = _init(model, images.shape)
  plain = _apply(ConvNeXtEncoder(**SMALL_CONVNEXT), variables, images)['pooled']
  np.testing.assert_array_equal(_apply(model, variables, images, deterministic=True)['pooled'], plain)
  dropped = _apply(model, variables, images, deterministic=False, rngs={'dropout': jax.random.key(3)})['pooled']
  assert not np.allclose(dropped, plain)
  rv = _init(resnet, images.shape)
  out, _ = _apply(resnet, rv, images, deterministic=False, mutable=['batch_stats'],
                  rngs={'dropout': jax.random.key(3)})
  assert np.all(np.isfinite(np.asarray(out['pooled'], np.float32)))


@pytest.mark.parametrize('cls, kw', [(ResNetEncoder, SMALL_RESNET), (ConvNeXtEncoder, SMALL_CONVNEXT)])
def test_bfloat16_compute(cls, kw):
  images = jax.random.normal(jax.random.key(4), (2, 32, 32, 3))
  f32 = cls(**kw)
  variables = _init(f32, images.shape)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  out = _apply(cls(**kw, dtype=jnp.bfloat16), variables, images)
  assert out['feature_map'].dtype == jnp.bfloat16
  ref = _apply(f32, variables, images)['pooled']
  np.testing.assert_allclose(np.asarray(out['pooled'], np.float32), ref, atol=0.1 * float(np.abs(ref).max()) + 0.05)


def test_logical_axes_shard_under_the_default_rules():
  out = run_python('''
import flax.linen as nn, jax, jax.numpy as jnp
from mim_jax.models.convnets import ConvNeXtEncoder, ResNetEncoder
from mim_jax.train.sharding import DEFAULT_RULES, make_mesh
mesh = make_mesh(data=1, fsdp=8)
for m in (ResNetEncoder(block='bottleneck', depths=(1, 1, 1, 1), widths=(8, 8, 16, 16)),
          ConvNeXtEncoder(depths=(1, 1, 1, 1), dims=(8, 16, 16, 24))):
  boxed = jax.eval_shape(m.init, jax.random.key(0), jnp.ones((8, 32, 32, 3)))['params']
  specs = nn.get_partition_spec(boxed)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, DEFAULT_RULES)
  assert all(sum(a is not None for a in s.spec) <= 1 for s in jax.tree.leaves(shardings))
  params = jax.tree.map(lambda a, sh: jax.device_put(jnp.zeros(a.shape, a.dtype), sh), nn.unbox(boxed), shardings)
  sharded = [x for x in jax.tree.leaves(params) if not x.sharding.is_fully_replicated]
  print(type(m).__name__, len(sharded), len(jax.tree.leaves(params)))
''', devices=8)
  for line in out.strip().splitlines():
    _, n_sharded, n = line.split()
    assert 0 < int(n_sharded) <= int(n)


@pytest.mark.slow
def test_real_init_follows_timm():
  model = ResNetEncoder(**SMALL_RESNET)
  variables = nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 32, 32, 3))))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  # timm's zero_init_last: the last BN of every residual branch starts at gamma 0; running stats (0, 1)
  assert not np.any(variables['params']['stages_1']['blocks_0']['bn2']['scale'])
  assert np.all(variables['params']['stages_1']['blocks_0']['bn1']['scale'] == 1)
  assert np.all(variables['batch_stats']['stem_bn']['var'] == 1)
  convnext = ConvNeXtEncoder(**SMALL_CONVNEXT)
  params = nn.unbox(jax.jit(convnext.init)(jax.random.key(0), jnp.ones((1, 32, 32, 3))))['params']
  np.testing.assert_array_equal(params['stages_0']['blocks_0']['gamma'], np.float32(1e-6))
