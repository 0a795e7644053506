"""The fused CPU attention kernel (mim_jax.kernels.attention_cpu): same values and gradients as the einsum path,
NaN propagation, when 'auto' picks it, and the fallbacks when it cannot be built or does not apply."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_python
from mim_jax.kernels import attention_cpu
from mim_jax.models.vit import Attention

pytestmark = pytest.mark.skipif(not attention_cpu.available(),
                                reason=f'fused CPU attention unavailable here: {attention_cpu.status_reason()}')


def _reference(q, k, v):
  logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, precision='highest') / np.sqrt(q.shape[-1])
  return jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(logits, axis=-1), v, precision='highest')


# (B, T, S, H, D): ViT-Tiny's encoder and masked-query decoder block, a long odd key length (several 64-wide
# column blocks, padding 197 -> 208), row counts that leave every micro-kernel remainder, the smallest head dim.
SHAPES = [(2, 17, 17, 3, 64), (2, 48, 65, 3, 64), (3, 5, 197, 2, 32), (1, 70, 70, 1, 16), (2, 1, 3, 2, 16)]


@pytest.mark.parametrize('shape', SHAPES, ids=[str(s) for s in SHAPES])
def test_kernel_matches_einsum_values_and_gradients(shape):
  b, t, s, h, d = shape
  kq, kk, kv, kt = jax.random.split(jax.random.PRNGKey(sum(shape)), 4)
  q, k, v = (2 * jax.random.normal(key, (b, n, h, d)) for key, n in ((kq, t), (kk, s), (kv, s)))
  target = jax.random.normal(kt, (b, t, h, d))
  ref = jax.jit(jax.value_and_grad(lambda *a: jnp.sum(_reference(*a) * target), argnums=(0, 1, 2)))
  fused = jax.jit(jax.value_and_grad(lambda *a: jnp.sum(attention_cpu.attention(*a) * target), argnums=(0, 1, 2)))
  np.testing.assert_allclose(attention_cpu.attention(q, k, v), _reference(q, k, v), atol=2e-6, rtol=1e-5)
  (loss_r, grads_r), (loss_f, grads_f) = ref(q, k, v), fused(q, k, v)
  np.testing.assert_allclose(loss_f, loss_r, rtol=1e-5)
  for gf, gr in zip(grads_f, grads_r):
    assert gf.shape == gr.shape
    np.testing.assert_allclose(gf, gr, atol=1e-5 * float(jnp.max(jnp.abs(gr))), rtol=1e-4)


@pytest.mark.parametrize('shape', [(2, 17, 3, 64), (3, 197, 2, 32), (1, 5, 1, 16)], ids=str)
def test_packed_kernel_matches_einsum_values_and_gradients(shape):
  b, n, h, d = shape
  kx, kt = jax.random.split(jax.random.PRNGKey(sum(shape)))
  qkv = 2 * jax.random.normal(kx, (b, n, 3, h, d))
  target = jax.random.normal(kt, (b, n, h, d))
  ref = lambda qkv: jnp.sum(_reference(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]) * target)
  fused = lambda qkv: jnp.sum(attention_cpu.packed_attention(qkv) * target)
  (loss_r, grad_r), (loss_f, grad_f) = jax.jit(jax.value_and_grad(ref))(qkv), jax.jit(jax.value_and_grad(fused))(qkv)
  np.testing.assert_allclose(loss_f, loss_r, rtol=1e-5)
  np.testing.assert_allclose(grad_f, grad_r, atol=1e-5 * float(jnp.max(jnp.abs(grad_r))), rtol=1e-4)


def test_kernel_propagates_nan():
  q = jnp.ones((1, 4, 1, 16)).at[0, 2, 0, 3].set(jnp.nan)
  out = attention_cpu.attention(q, jnp.ones((1, 5, 1, 16)), jnp.ones((1, 5, 1, 16)))
  assert np.isnan(out[0, 2]).all() and np.isfinite(np.delete(np.asarray(out[0]), 2, axis=0)).all()


def test_softmax_exponentials_are_accurate_over_the_whole_range():
  """The kernel's vectorized exp: probabilities within a few ulp of a float64 softmax for logits from 0 down to
  -120 (e^-87 and below flush to 0). Logits q.k / sqrt(D) are exact here (q = sqrt(D) e_0, k_s = l_s e_0), and
  one-hot values v_s = e_s make the output's first S columns the probabilities themselves."""
  s_len, d = 40, 64
  logits = -np.linspace(0.0, 120.0, s_len, dtype=np.float32)
  scales = np.array([1.0, 0.5, 0.03125, -1.0], np.float32)  # per query row: steep, mild, nearly flat, reversed
  q = np.zeros((1, len(scales), 1, d), np.float32)
  q[0, :, 0, 0] = np.sqrt(d) * scales
  k = np.zeros((1, s_len, 1, d), np.float32)
  k[0, :, 0, 0] = logits
  v = np.eye(s_len, d, dtype=np.float32)[None, :, None, :]
  probs = np.asarray(attention_cpu.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)))[0, :, 0, :s_len]
  z = scales[:, None] * logits[None, :]  # float32, exact; z - max rounds in float32 as in any float32 softmax
  ref = np.exp((z - z.max(axis=1, keepdims=True)).astype(np.float64))
  ref /= ref.sum(axis=1, keepdims=True)
  normal = ref > 1e-37
  np.testing.assert_allclose(probs[normal], ref[normal], rtol=1e-6)
  assert np.all(probs[~normal] <= 1e-37) and (~normal).any()


def _hlo(impl, dtype=jnp.float32, width=64, heads=2, query_ids=None):
  x = jnp.zeros((2, 9, width), dtype)
  module = Attention(heads, dtype=dtype, attention_impl=impl)
  params = module.init(jax.random.PRNGKey(0), x)
  loss = lambda p: jnp.sum(module.apply(p, x, query_ids)).astype(jnp.float32)
  return jax.jit(jax.grad(loss)).lower(params).as_text()


def test_auto_uses_the_kernel_only_where_it_applies():
  # All tokens attend: the packed kernel reads the qkv projection in place. Some queries: the separate one.
  hlo = _hlo('auto')
  assert 'mim_jax_attention_cpu_packed_forward' in hlo and 'mim_jax_attention_cpu_packed_backward' in hlo
  hlo = _hlo('auto', query_ids=jnp.array([[1, 4, 5], [0, 2, 8]]))
  assert 'mim_jax_attention_cpu_forward' in hlo and 'mim_jax_attention_cpu_backward' in hlo
  assert 'mim_jax_attention_cpu' not in _hlo('einsum')
  assert 'mim_jax_attention_cpu' not in _hlo('auto', jnp.bfloat16)  # float32 only
  assert 'mim_jax_attention_cpu' not in _hlo('auto', width=40, heads=2)  # head dim 20: not a multiple of 16
  with pytest.raises(ValueError, match="'cpu_fused' cannot run here: dtype bfloat16, not float32.*'auto'"):
    _hlo('cpu_fused', jnp.bfloat16)


def test_several_devices_and_a_failed_build_fall_back_to_einsum(tmp_path):
  # Several devices: the FFI call has no sharding rule, so 'auto' takes the einsum path.
  code = """
import jax, jax.numpy as jnp
from mim_jax.models.vit import Attention
x = jnp.zeros((2, 9, 64)); m = Attention(2, attention_impl='auto'); p = m.init(jax.random.PRNGKey(0), x)
print('KERNEL' if 'mim_jax_attention_cpu' in jax.jit(m.apply).lower(p, x).as_text() else 'EINSUM')
"""
  assert run_python(code, devices=2).split()[-1] == 'EINSUM'
  # No compiler: one warning that says why, then the einsum path; 'cpu_fused' is an error that names the reason.
  code_no_compiler = code + """
try:
  Attention(2, attention_impl='cpu_fused').apply(p, x)
except ValueError as e:
  print('ERROR', e)
from mim_jax.kernels import attention_cpu
try:  # called directly: a clear error rather than XLA's 'No FFI handler registered'
  attention_cpu.attention(jnp.zeros((1, 2, 1, 16)), jnp.zeros((1, 2, 1, 16)), jnp.zeros((1, 2, 1, 16)))
except RuntimeError as e:
  print('DIRECT', e)
"""
  env = {'CXX': 'no-such-compiler-xyz', 'MIM_JAX_KERNEL_CACHE': str(tmp_path)}
  out = run_python(f'import warnings\nwarnings.simplefilter("always")\n{code_no_compiler}', env=env)
  assert 'EINSUM' in out and "ERROR attention_impl='cpu_fused' cannot run here" in out
  assert "no C++ compiler 'no-such-compiler-xyz'" in out
  assert 'DIRECT the fused CPU attention kernel is unavailable' in out
  out = run_python(code, env={'MIM_JAX_CPU_ATTENTION': '0'})
  assert out.split()[-1] == 'EINSUM'


def test_kernel_under_vmap_runs_per_example():
  qkv = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 5, 3, 1, 16))
  loss = lambda x: jnp.sum(jnp.sin(attention_cpu.packed_attention(x)))
  per_example = jax.vmap(jax.grad(loss))(qkv)
  np.testing.assert_allclose(per_example, jnp.stack([jax.grad(loss)(x) for x in qkv]), atol=1e-6)
