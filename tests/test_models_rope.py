"""2-D rotary positions (CroCo v2): relative by construction, applied the same whatever the attention kernel,
and refused where they would be ill-defined. (Tensor parity with the official RoPE2D: tests/test_parity.py,
official_croco/croco_official_tiny_rope.npz.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax.models import rope
from mim_jax.models.vit import ViTEncoder


def test_rotated_dot_products_depend_on_the_offset_only():
  q, k = jax.random.normal(jax.random.key(0), (2, 1, 1, 1, 16))
  def dot(pq, pk):
    table = rope.rope_2d_table(jnp.array([[pq, pk]]), 16)  # [1, 2, 2, 16]
    rq = rope.apply_rope(q, table[:, :1])
    rk = rope.apply_rope(k, table[:, 1:])
    return float(jnp.sum(rq * rk))
  base = dot((1, 2), (3, 0))
  assert dot((5, 7), (7, 5)) == pytest.approx(base, rel=1e-5)  # the same (2, -2) offset elsewhere
  assert dot((1, 2), (3, 1)) != pytest.approx(base, rel=1e-3)
  # norms are kept (a rotation)
  t = rope.apply_rope(q, rope.rope_2d_table(jnp.array([[(4, 9)]]), 16))
  assert float(jnp.linalg.norm(t)) == pytest.approx(float(jnp.linalg.norm(q)), rel=1e-5)
  with pytest.raises(ValueError, match='divisible by 4'):
    rope.rope_2d_table(jnp.zeros((1, 2), jnp.int32), 6)


def test_vit_rope_is_the_same_under_every_attention_kernel():
  enc = ViTEncoder(patch_size=4, width=32, depth=2, num_heads=2, class_token='none', pos_embed='none', rope='2d')
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  params = enc.init(jax.random.key(1), x)['params']
  ids = jnp.array([[5, 0, 9, 3], [1, 15, 2, 7]])
  ref = enc.clone(attention_impl='einsum').apply({'params': params}, x, ids_keep=ids)['tokens']
  for impl in ('auto', 'cpu_fused', 'xla'):
    out = enc.clone(attention_impl=impl).apply({'params': params}, x, ids_keep=ids)['tokens']
    np.testing.assert_allclose(out, ref, atol=2e-5)
  # Tokens carry their grid positions: the same visible set in another order gives the same tokens, reordered.
  perm = enc.apply({'params': params}, x, ids_keep=ids[:, ::-1])['tokens']
  np.testing.assert_allclose(perm[:, ::-1], ref, atol=2e-5)
  plain = enc.clone(rope='none').apply({'params': params}, x, ids_keep=ids)['tokens']
  assert not np.allclose(plain, ref, atol=1e-3)


def test_rope_needs_patch_tokens_only():
  enc = ViTEncoder(patch_size=4, width=32, depth=1, num_heads=2, rope='2d')
  with pytest.raises(ValueError, match="class_token='none'"):
    enc.init(jax.random.key(1), jnp.zeros((1, 8, 8, 1)))
  with pytest.raises(ValueError, match="rope must be one of"):
    enc.clone(rope='3d', class_token='none').init(jax.random.key(1), jnp.zeros((1, 8, 8, 1)))
