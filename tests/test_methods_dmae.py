"""DMAE: the frozen, truncated teacher; the distillation loss; teachers read from a workdir (never re-saved)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from mim_jax import methods
from mim_jax.methods.dmae import l2_normalize


def dmae_config(**fields):
  c = load_config('configs/mae/digits.py', 'tiny')
  c.method = 'dmae'
  c.mask.ratio = 0.75
  c.model.encoder = dict(patch_size=4, width=32, depth=3, num_heads=2, mlp_ratio=2.0)
  c.dmae = {**dict(teacher_model=dict(width=48, depth=4, num_heads=4), teacher_layers=(2,), student_layers=(1,)),
            **fields}
  return c


def build(config, shape=(16, 16, 1)):
  return methods.build(config, methods.Facts.for_images(shape))


def test_teacher_is_truncated_frozen_and_the_loss_is_pixels_plus_distances():
  method = build(dmae_config())
  images = jax.random.normal(jax.random.key(0), (4, 16, 16, 1))
  params, _ = nn.meta.unbox(method.init(jax.random.key(1), {'image': images}))
  extras = method.load_external()
  assert method.teacher_encoder.depth == 3 and not method.teacher_encoder.final_norm  # deepest used block: 2
  assert sorted(k for k in extras['teacher'] if k.startswith('blocks_')) == ['blocks_0', 'blocks_1', 'blocks_2']
  assert 'norm' not in extras['teacher']
  batch = {'image': images}
  loss_fn = lambda p, e: method.loss_fn(p, e, batch, jax.random.key(2), 0)[0]  # noqa: E731
  (loss, (metrics, _)) = jax.jit(method.loss_fn)(params, extras, batch, jax.random.key(2), 0)
  np.testing.assert_allclose(float(loss), float(metrics['pix_loss']) + float(metrics['distill_loss']), rtol=1e-6)
  assert 0.0 < float(metrics['distill_loss']) <= 2.0  # an L1 between unit vectors, averaged per channel
  student_grads, teacher_grads = jax.jit(jax.grad(loss_fn, argnums=(0, 1)))(params, extras)
  assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(teacher_grads))  # frozen: exactly zero
  assert float(jnp.abs(student_grads['heads']['head_0']['kernel']).sum()) > 0  # the projection head learns
  # The distance by hand: teacher block 2 and projected student block 1 on the same visible tokens.
  info = method.masker(jax.random.key(2), 4)
  t = jax.jit(method.teacher_hidden)(extras['teacher'], images, info)[0]
  _, _, s = jax.jit(method.model.apply)({'params': params}, images, info)
  distill = jax.jit(method.forward)(params, images, info, extras['teacher'])['distill'][0]
  np.testing.assert_allclose(float(distill),
                             float(jnp.mean(jnp.abs(l2_normalize(t) - l2_normalize(s[0])))), rtol=1e-6)
  # the same random teacher every time (it is rebuilt after every restore, never checkpointed)
  again = method.load_external()
  jax.tree.map(np.testing.assert_array_equal, extras, again)


@pytest.mark.parametrize('fields, message', [
    (dict(teacher_layers=(1, 2), student_layers=(1,)), 'pair up'),
    (dict(student_layers=(3,)), "outside the student's 3 blocks"),
    (dict(teacher_layers=(4,)), "outside the teacher's 4 blocks"),
    (dict(teacher_model={}), 'config.dmae.teacher is empty'),
    (dict(teacher_model=dict(patch_size=8)), 'must see the same tokens'),
    (dict(distance='cosine'), 'distance'),
    (dict(tau=1.0), 'unknown config.dmae'),
])
def test_bad_settings_are_named(fields, message):
  config = dmae_config()
  for key, value in fields.items():
    config.dmae[key] = value  # assignment replaces (update would merge dicts)
  with pytest.raises(ValueError, match=message):
    build(config)


# Two short trainings (~30 s): under -m slow. The default suite keeps the mechanism's checks: external extras are
# never checkpointed and are reloaded on resume (tests/test_spine.py, a workdir teacher), DMAE's truncation and
# frozen teacher (above).
@pytest.mark.slow
def test_a_workdir_teacher_is_loaded_truncated_and_never_saved(tmp_path):
  from mim_jax import main
  from mim_jax import workdir as workdir_lib

  teacher_cfg = load_config('configs/mae/digits.py', 'tiny')
  teacher_cfg.model.encoder = dict(patch_size=4, width=48, depth=3, num_heads=4, mlp_ratio=2.0)
  teacher_cfg.eval.enabled = False
  main.run(teacher_cfg, str(tmp_path / 'teacher'))
  saved, _ = workdir_lib.read_params(str(tmp_path / 'teacher'), None)

  student = dmae_config(teacher=str(tmp_path / 'teacher'), teacher_layers=(1,), student_layers=(1,))
  student.dmae.teacher_model = {}  # the workdir's architecture
  student.eval.enabled = False
  method = build(student)
  loaded = method.load_external()['teacher']
  assert sorted(k for k in loaded if k.startswith('blocks_')) == ['blocks_0', 'blocks_1']  # truncated after block 1
  np.testing.assert_array_equal(loaded['blocks_1']['mlp']['fc1']['kernel'],
                                saved['encoder']['blocks_1']['mlp']['fc1']['kernel'])
  random = build(dmae_config(teacher=str(tmp_path / 'teacher'), teacher_layers=(1,), student_layers=(1,),
                             teacher_random=True)).load_external()['teacher']
  assert not np.allclose(random['blocks_1']['mlp']['fc1']['kernel'], loaded['blocks_1']['mlp']['fc1']['kernel'])

  with pytest.raises(ValueError, match='is neither a workdir'):
    build(dmae_config(teacher=str(tmp_path / 'missing'), teacher_model={}))

  main.run(student, str(tmp_path / 'student'))
  params, step = workdir_lib.read_params(str(tmp_path / 'student'), None)
  assert step == student.total_steps
  assert set(params) == {'encoder', 'decoder', 'heads'}  # the teacher is not in the student's checkpoint
  # nor in any file of its checkpoints (orbax writes the tree's key names into its metadata)
  files = [p for p in (tmp_path / 'student' / 'checkpoints').rglob('*') if p.is_file()]
  assert files and not [p for p in files if b"'teacher'" in p.read_bytes() or b'"teacher"' in p.read_bytes()]


def test_every_field_of_the_recipes_blocks_can_be_overridden():
  # the CLI refuses overrides of keys a config lacks: the recipes write every field of the method's block
  from mim_jax.methods.dmae import dmae_defaults
  from mim_jax.methods.mrmae import mrmae_defaults

  for path, block, defaults in (('configs/dmae/fashion_mnist.py', 'dmae', dmae_defaults()),
                                ('configs/dmae/vit_base_in1k.py', 'dmae', dmae_defaults()),
                                ('configs/mrmae/fashion_mnist.py', 'mrmae', mrmae_defaults())):
    assert set(load_config(path)[block]) == set(defaults), path
