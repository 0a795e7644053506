"""MR-MAE: the mimic loss reads the visible tokens only, the pixel loss the masked ones; the teacher is frozen."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from mim_jax import methods


def setup(**fields):
  c = load_config('configs/mrmae/fashion_mnist.py', 'tiny')
  c.model.encoder = dict(patch_size=4, width=32, depth=2, num_heads=2, mlp_ratio=2.0)
  c.mrmae.update(fields)
  method = methods.build(c, methods.Facts.for_images((16, 16, 1)))
  images = jax.random.normal(jax.random.key(0), (4, 16, 16, 1))
  params, _ = nn.meta.unbox(method.init(jax.random.key(1), {'image': images}))
  return method, params, method.load_external(), images


def test_mimic_reads_visible_tokens_only_and_the_pixel_loss_masked_ones():
  method, params, extras, images = setup()
  info = method.masker(jax.random.key(2), 4)
  tokens = jax.jit(method.teacher_tokens)(extras['teacher'], images)
  forward = jax.jit(method.forward)  # one compile for the three calls with tokens (eager dispatch is slow)
  base = forward(params, images, info, tokens)
  masked = info.mask[:, :, None] > 0.5
  # Teacher features at masked positions do not matter, to the bit...
  other = forward(params, images, info, jnp.where(masked, 123.0, tokens))
  assert float(other['mimic_loss']) == float(base['mimic_loss'])
  # ...at a visible one they do.
  first_visible = info.ids_keep[0, 0]
  changed = forward(params, images, info, tokens.at[0, first_visible].add(1.0))
  assert float(changed['mimic_loss']) != float(base['mimic_loss'])
  # The pixel loss (MAE's, on the masked patches) does not read the teacher.
  assert float(base['rec_loss']) == float(jax.jit(method.forward)(params, images, info)['rec_loss'])
  np.testing.assert_allclose(float(base['loss']), float(base['rec_loss']) + float(base['mimic_loss']), rtol=1e-6)
  # the targets are standardized per token
  np.testing.assert_allclose(np.asarray(tokens.mean(-1)), 0.0, atol=1e-5)


def test_teacher_is_frozen_whole_and_rebuilt_identically():
  method, params, extras, images = setup()
  assert method.teacher_encoder.depth == 2 and method.teacher_encoder.final_norm  # the whole teacher, last layer
  loss = lambda p, e: method.loss_fn(p, e, {'image': images}, jax.random.key(3), 0)[0]  # noqa: E731
  g_student, g_teacher = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, extras)
  assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(g_teacher))
  assert float(jnp.abs(g_student['mimic_head']['kernel']).sum()) > 0
  jax.tree.map(np.testing.assert_array_equal, extras, method.load_external())


def test_bad_settings_are_named():
  with pytest.raises(ValueError, match='target_norm'):
    setup(target_norm='whiten')
  c = load_config('configs/mrmae/fashion_mnist.py')
  with pytest.raises(ValueError, match='config.mrmae.teacher is empty'):
    methods.build(c, methods.Facts.for_images((28, 28, 1)))


def test_focused_mimicking_keeps_what_the_teacher_attends_to():
  method, params, extras, images = setup(keep='attention')
  tokens, attention = method.teacher_tokens(extras['teacher'], images, cls_attention=True)
  assert attention.shape == (4, 16)
  # A teacher whose CLS attends to one token only: every draw keeps it (first), random keep would miss it often.
  peaked = jnp.zeros_like(attention).at[:, 5].set(1.0) + 1e-6
  from mim_jax import masking
  info = masking.mask_from_importance(jax.random.key(0), peaked, method.masker.len_keep)
  assert np.all(np.asarray(info.ids_keep[:, 0]) == 5)
  value = method.loss_fn(params, extras, {'image': images}, jax.random.key(3), 0)[0]
  assert np.isfinite(float(value))
  with pytest.raises(ValueError, match='keep'):
    setup(keep='top')


def test_two_teachers_each_get_a_head_and_a_frozen_extra():
  method, params, extras, images = setup(second_teacher_model=dict(width=24, depth=1, num_heads=2))
  assert method.external_extras == ('teacher', 'teacher2') and set(extras) == {'teacher', 'teacher2'}
  assert params['mimic_head_2']['kernel'].shape[-1] == 24
  loss = lambda p, e: method.loss_fn(p, e, {'image': images}, jax.random.key(3), 0)  # noqa: E731
  (value, (metrics, _)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, extras)
  assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads[1]))  # both teachers frozen
  assert float(jnp.abs(grads[0]['mimic_head_2']['kernel']).sum()) > 0
  info = method.masker(jax.random.key(3), 4)
  tokens = tuple(method.teacher_tokens(extras[k], images, which=i) for i, k in enumerate(method.external_extras))
  out = method.forward(params, images, info, tokens)
  np.testing.assert_allclose(float(out['mimic_loss']), float(out['mimic_losses'].sum()), rtol=1e-6)
  with pytest.raises(ValueError, match='mimic heads'):
    method.forward(params, images, info, tokens[:1])
