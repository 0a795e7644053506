"""Layer-wise lr decay multipliers for a 12-block ViT: decay ** (num_layers - layer_id), num_layers = 13."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mim_jax.models.vit import ViTEncoder
from mim_jax.train.optim import layer_decay_multipliers, scale_by_tree

DEPTH, DECAY = 12, 0.65
ENCODER = ViTEncoder(patch_size=4, width=32, depth=DEPTH, num_heads=2)


@pytest.fixture(scope='module')
def vit12_params():
  shapes = jax.eval_shape(ENCODER.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))['params']
  f32 = jnp.float32
  head = {'kernel': jax.ShapeDtypeStruct((32, 10), f32), 'bias': jax.ShapeDtypeStruct((10,), f32)}
  fc_norm = {'scale': jax.ShapeDtypeStruct((32,), jnp.float32)}
  return {'encoder': shapes, 'fc_norm': fc_norm, 'head': head}


def _value(leaf):
  return getattr(leaf, 'value', leaf)  # unbox logically partitioned leaves


def test_12_block_vit_matches_formula(vit12_params):
  mult = layer_decay_multipliers(vit12_params, ENCODER.layer_id, ENCODER.num_layers, DECAY)
  num_layers = DEPTH + 1
  enc = mult['encoder']
  assert _value(enc['patch_embed']['kernel']) == pytest.approx(DECAY ** num_layers)
  assert _value(enc['patch_embed']['bias']) == pytest.approx(DECAY**13)
  assert _value(enc['cls_token']) == pytest.approx(DECAY**13)
  for i in range(DEPTH):
    expected = DECAY ** (num_layers - (i + 1))
    block_leaves = jax.tree.leaves(enc[f'blocks_{i}'])
    assert len(block_leaves) == 12  # every parameter of the block, weights, biases and norms alike
    assert all(v == pytest.approx(expected) for v in block_leaves), i
  assert _value(enc['blocks_11']['mlp']['fc2']['kernel']) == pytest.approx(DECAY)  # last block: one decay
  assert _value(enc['norm']['scale']) == 1.0
  assert mult['fc_norm']['scale'] == 1.0
  assert mult['head']['kernel'] == 1.0 and mult['head']['bias'] == 1.0
  # The multiplier tree has exactly the parameter tree's structure.
  assert jax.tree.structure(mult) == jax.tree.structure(vit12_params)


def test_layer_id_rules():
  layer_id = ENCODER.layer_id  # names inside the encoder
  assert ENCODER.num_layers == 13
  assert layer_id(['pos_embed']) == 0
  assert layer_id(['blocks_0', 'attn', 'qkv', 'kernel']) == 1
  assert layer_id(['blocks_11', 'norm1', 'scale']) == 12
  assert layer_id(['norm', 'scale']) == 13
  with pytest.raises(ValueError, match='depth'):
    layer_id(['blocks_12', 'x'])


def test_scale_by_tree_scales_updates():
  params = {'encoder': {'blocks_0': {'w': jnp.ones(2)}}, 'head': {'w': jnp.ones(2)}}
  one_block = ViTEncoder(patch_size=4, width=8, depth=1, num_heads=1)
  mult = layer_decay_multipliers(params, one_block.layer_id, one_block.num_layers, 0.5)
  tx = optax.chain(optax.sgd(1.0), scale_by_tree(mult))
  updates, _ = tx.update(params, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(updates['encoder']['blocks_0']['w']), -0.5)
  np.testing.assert_allclose(np.asarray(updates['head']['w']), -1.0)
