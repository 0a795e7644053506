"""Fine-tune pieces: the classifier, the reference's weight-decay grouping, layer decay in the optimizer."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mim_jax import config as config_lib
from mim_jax.eval import finetune
from mim_jax.models.vit import ViTEncoder
from mim_jax.train import optim

DEPTH = 3


@pytest.fixture(scope='module')
def classifier():
  encoder = ViTEncoder(patch_size=4, width=16, depth=DEPTH, num_heads=2, mlp_ratio=2.0, drop_path=0.1,
                       final_norm=False)
  model = finetune.Classifier(encoder, num_classes=5)
  boxed = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 1)))['params']
  return model, boxed, nn.meta.unbox(boxed)


def test_classifier_params_global_pool_head(classifier):
  _, _, params = classifier
  assert set(params) == {'encoder', 'fc_norm', 'head'}
  assert 'norm' not in params['encoder']  # fc_norm after pooling replaces the encoder's final norm
  assert params['head']['kernel'].shape == (16, 5)
  assert float(jnp.abs(params['head']['kernel']).max()) <= 2 * 2e-5  # trunc_normal(2e-5): cut at 2 std
  np.testing.assert_array_equal(params['head']['bias'], 0.0)


def test_drop_path_needs_and_uses_the_dropout_rng(classifier):
  model, _, params = classifier
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
  train = jax.jit(lambda k: model.apply({'params': params}, x, deterministic=False, rngs={'dropout': k}))
  a, b = train(jax.random.PRNGKey(0)), train(jax.random.PRNGKey(1))
  c = jax.jit(lambda: model.apply({'params': params}, x, deterministic=True))()
  assert not np.allclose(a, b) and not np.allclose(a, c)


def test_weight_decay_mask_follows_the_reference(classifier):
  _, boxed, params = classifier
  for tree in (params, boxed):  # optax calls the mask on boxed params at init and unboxed ones at update
    mask = nn.meta.unbox(finetune.weight_decay_mask(tree)) if tree is boxed else finetune.weight_decay_mask(tree)
    assert mask['encoder']['blocks_0']['attn']['qkv']['kernel']
    assert mask['encoder']['patch_embed']['kernel'] and mask['head']['kernel']
    assert not mask['encoder']['cls_token']  # no_weight_decay() in the reference fine-tune
    assert not mask['encoder']['blocks_0']['attn']['qkv']['bias']
    assert not mask['encoder']['blocks_0']['norm1']['scale'] and not mask['fc_norm']['scale']


def test_optimizer_scales_each_update_by_its_layer_multiplier(classifier):
  _, _, params = classifier
  decay = 0.65
  encoder = ViTEncoder(patch_size=4, width=16, depth=DEPTH, num_heads=2)
  mult = optim.layer_decay_multipliers(params, encoder.layer_id, encoder.num_layers, decay)
  ones = jax.tree.map(lambda _: 1.0, mult)
  cfg = dict(b1=0.9, b2=0.999, weight_decay=0.05, layer_decay=decay)
  import ml_collections
  cfg = ml_collections.ConfigDict(cfg)
  grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.3, params)
  updates = {}
  for name, m in (('decayed', mult), ('flat', ones)):
    tx = finetune.make_optimizer(cfg, optax.constant_schedule(1e-3), m)
    updates[name] = jax.jit(lambda g, p, tx=tx: tx.update(g, tx.init(p), p)[0])(grads, params)
  leaves = jax.tree_util.tree_leaves_with_path(updates['flat'])
  decayed = dict(jax.tree_util.tree_leaves_with_path(updates['decayed']))
  for path, flat in leaves:
    names = [k.key for k in path]
    lid = encoder.layer_id(names[1:]) if names[0] == 'encoder' else encoder.num_layers
    expected = decay ** (DEPTH + 1 - lid)
    np.testing.assert_allclose(decayed[path], expected * flat, rtol=1e-6, err_msg='/'.join(names))
  assert float(mult['encoder']['patch_embed']['kernel']) == pytest.approx(decay ** (DEPTH + 1))
  assert float(mult['head']['kernel']) == 1.0 and float(mult['fc_norm']['scale']) == 1.0


def test_pretrained_encoder_params_drop_mask_token_and_final_norm(classifier):
  model, _, params = classifier
  pre_encoder = ViTEncoder(patch_size=4, width=16, depth=DEPTH, num_heads=2, mlp_ratio=2.0, use_mask_token=True)
  x = jnp.zeros((2, 8, 8, 1))
  pre_params = nn.meta.unbox(pre_encoder.init(jax.random.PRNGKey(3), x, mask=jnp.zeros((2, 4)))['params'])
  assert {'mask_token', 'norm'} <= set(pre_params)

  class FakePretrained:
    def encoder_params(self):
      return pre_params

  kept = finetune.pretrained_encoder_params(FakePretrained(), params['encoder'])
  assert set(kept) == set(params['encoder']) and not {'mask_token', 'norm'} & set(kept)
  with_norm = model.clone(encoder=model.encoder.clone(final_norm=True), global_pool=False)
  cls_params = nn.meta.unbox(jax.eval_shape(with_norm.init, jax.random.PRNGKey(0), x)['params'])
  assert 'norm' in finetune.pretrained_encoder_params(FakePretrained(), cls_params['encoder'])
  wider = nn.meta.unbox(jax.eval_shape(model.clone(encoder=model.encoder.clone(width=32)).init,
                                       jax.random.PRNGKey(0), x)['params'])
  with pytest.raises(ValueError, match='does not fit'):
    finetune.pretrained_encoder_params(FakePretrained(), wider['encoder'])


def test_eval_interval():
  assert finetune.eval_interval(-1, 1251, 125100) == 1251  # once per epoch (the ImageNet configs)
  assert finetune.eval_interval(0, 11, 1100) == 1100  # only at the end
  assert finetune.eval_interval(100, 11, 1100) == 100


def test_resolve_steps_from_epochs_or_explicit_steps():
  import ml_collections
  c = ml_collections.ConfigDict(dict(epochs=100.0, warmup_epochs=5.0, total_steps=-1, warmup_steps=-1))
  assert config_lib.resolve_steps(c, 1437 // 128) == (1100, 55)
  c.total_steps, c.warmup_steps = 6, 2
  assert config_lib.resolve_steps(c, 1437 // 16) == (6, 2)
