"""The CPU LayerNorm kernel (mim_jax.kernels.layernorm_cpu): flax's values and gradients, the same parameters,
and where the models use it."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_python
from mim_jax.kernels import layernorm_cpu
from mim_jax.models import vit

pytestmark = pytest.mark.skipif(
    not layernorm_cpu.LIBRARY.available(),
    reason=f'CPU LayerNorm kernel unavailable here: {layernorm_cpu.LIBRARY.status_reason()}')


@pytest.mark.parametrize('shape', [(130, 192), (7, 16), (1, 512), (65, 3)], ids=str)
def test_kernel_matches_flax_values_and_gradients(shape):
  m, d = shape
  kx, ks, kb, kt = jax.random.split(jax.random.PRNGKey(m + d), 4)
  x = 3 * jax.random.normal(kx, shape) + 1  # an offset mean: the two-pass variance matters
  scale, bias, target = jax.random.normal(ks, (d,)), jax.random.normal(kb, (d,)), jax.random.normal(kt, shape)
  flax_ln = nn.LayerNorm(epsilon=1e-6, use_fast_variance=False)
  ref = lambda x, s, b: jnp.sum(flax_ln.apply({'params': {'scale': s, 'bias': b}}, x) * target)
  ours = lambda x, s, b: jnp.sum(layernorm_cpu.layer_norm(x, s, b, 1e-6) * target)
  (loss_r, grads_r), (loss_o, grads_o) = (jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(x, scale, bias)
                                          for f in (ref, ours))
  np.testing.assert_allclose(loss_o, loss_r, rtol=1e-5, atol=1e-4)
  for go, gr in zip(grads_o, grads_r):
    np.testing.assert_allclose(go, gr, atol=1e-5 * float(jnp.max(jnp.abs(gr))), rtol=1e-4)


def test_models_use_it_with_flax_parameters_where_it_applies():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  encoder = vit.ViTEncoder(patch_size=4, width=64, depth=1, num_heads=4)
  params = encoder.init(jax.random.PRNGKey(1), x)
  assert 'mim_jax_layernorm_cpu_forward' in jax.jit(encoder.apply).lower(params, x).as_text()
  assert isinstance(vit.layer_norm(jnp.float32, 'n'), vit.CpuLayerNorm)
  assert type(vit.layer_norm(jnp.bfloat16, 'n')) is nn.LayerNorm  # bf16 compute: flax's code
  # The same parameter tree as flax's LayerNorm, so checkpoints and weight conversion do not change.
  ours = vit.layer_norm(jnp.float32, 'n').init(jax.random.PRNGKey(0), jnp.ones((3, 64)))
  theirs = vit.layer_norm(jnp.bfloat16, 'n').init(jax.random.PRNGKey(0), jnp.ones((3, 64)))
  assert jax.tree.map(jnp.shape, nn.meta.unbox(ours)) == jax.tree.map(jnp.shape, nn.meta.unbox(theirs))


def test_several_devices_or_the_switch_use_flax():
  code = """
import jax.numpy as jnp
from mim_jax.models import vit
print(type(vit.layer_norm(jnp.float32, 'n')).__name__)
"""
  assert run_python(code, devices=2).split()[-1] == 'LayerNorm'
  assert run_python(code, env={'MIM_JAX_CPU_LAYERNORM': '0'}).split()[-1] == 'LayerNorm'
  assert run_python(code).split()[-1] == 'CpuLayerNorm'
