"""Selfie: patch selection with a ResNet patch network. What makes it Selfie: the context summary never sees a target
patch (each patch is encoded on its own, and only visible ones are pooled), the candidates are the same image's
targets, and fine-tuning reuses the patch network as the first stages of the whole ResNet."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import load_config
from mim_jax.config import validate
from mim_jax.methods.base import Facts, build
from mim_jax.methods.selfie import selection_logits, selection_loss

RESNET = {'name': 'resnet', 'depths': (1, 1, 1, 1), 'widths': (8, 16, 16, 32), 'stem': 'small', 'stem_width': 8}


def _method(size=16, encoder=RESNET, mask='random', **selfie):
  c = ml_collections.ConfigDict({'method': 'selfie', 'model': {'encoder': dict(encoder)}, 'mask': {'name': mask},
                                 'selfie': {'patch_size': 4, 'num_targets': 4, 'pool_depth': 1, **selfie}})
  return build(c, Facts.for_images((size, size, 1)))


def _setup(method, batch=3, seed=0):
  """Images and random params / running statistics of the init's shapes (no initializer compile)."""
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.standard_normal((batch, *method.image_shape)), jnp.float32)
  params, extras = nn.meta.unbox(jax.eval_shape(method.init, jax.random.key(seed), {'image': images}))
  fill = lambda p, a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape) if p[-1].key in ('var', 'scale')  # noqa: E731
                                  else 0.3 * rng.standard_normal(a.shape), jnp.float32)
  params, extras = jax.tree_util.tree_map_with_path(fill, (params, extras))
  ids_visible, ids_target = method.draw_targets(jax.random.key(seed + 1), batch)
  return images, params, extras, ids_visible, ids_target


def test_targets_are_a_uniform_partition_of_the_grid():
  m = _method()
  vis, tgt = m.draw_targets(jax.random.key(3), 64)
  assert vis.shape == (64, 12) and tgt.shape == (64, 4)
  both = np.sort(np.concatenate([np.asarray(vis), np.asarray(tgt)], axis=1), axis=1)
  np.testing.assert_array_equal(both, np.tile(np.arange(16), (64, 1)))
  counts = np.bincount(np.asarray(tgt).ravel(), minlength=16)
  assert counts.min() > 0  # every position is sometimes a target (64 x 4 draws over 16 positions)


def test_the_context_never_sees_a_target_patch():
  # Each patch is encoded on its own (running statistics: no batch coupling) and only visible patches are pooled,
  # so changing a target patch's pixels changes that target's vector and nothing else.
  m = _method()
  images, params, extras, vis, tgt = _setup(m)
  run = jax.jit(lambda x: m.forward(params, extras['batch_stats'], x, vis, tgt, train=False))
  b, slot = 1, 2
  pos = int(tgt[b, slot])
  row, col = divmod(pos, 4)
  noisy = images.at[b, 4 * row:4 * row + 4, 4 * col:4 * col + 4].add(3.0)
  a, n = run(images), run(noisy)
  np.testing.assert_array_equal(np.asarray(a['queries']), np.asarray(n['queries']))
  changed = np.abs(np.asarray(a['targets']) - np.asarray(n['targets'])).max(-1)
  assert changed[b, slot] > 0 and np.count_nonzero(changed) == 1
  # ... while changing a visible patch moves the image's queries.
  pos = int(vis[b, 0])
  row, col = divmod(pos, 4)
  moved = run(images.at[b, 4 * row:4 * row + 4, 4 * col:4 * col + 4].add(3.0))
  assert np.abs(np.asarray(moved['queries'][b]) - np.asarray(a['queries'][b])).max() > 0
  np.testing.assert_array_equal(np.asarray(moved['queries'][0]), np.asarray(a['queries'][0]))


def test_selection_logits_score_same_image_or_other_image_candidates():
  rng = np.random.default_rng(0)
  q, t = (jnp.asarray(rng.standard_normal((3, 4, 5)), jnp.float32) for _ in range(2))
  same = np.asarray(selection_logits(q, t, 'image'))
  np.testing.assert_allclose(same[1, 2, 3], float(q[1, 2] @ t[1, 3]), rtol=1e-5)
  other = np.asarray(selection_logits(q, t, 'batch'))
  np.testing.assert_allclose(np.diagonal(other, axis1=1, axis2=2), np.diagonal(same, axis1=1, axis2=2))
  np.testing.assert_allclose(other[2, 0, 1], float(q[2, 0] @ t[0, 1]), rtol=1e-5)  # image 2's distractors: image 0
  logits = jnp.asarray(np.where(np.eye(4, dtype=bool), 5.0, 0.0)[None].repeat(2, 0))
  loss, acc = selection_loss(logits)
  assert float(acc) == 1.0
  np.testing.assert_allclose(float(loss), -np.log(np.exp(5) / (np.exp(5) + 3)), rtol=1e-5)


@pytest.mark.slow
def test_training_learns_to_select_and_updates_the_running_statistics():
  m = _method()
  images, params, extras, _, _ = _setup(m, batch=8)
  tx = __import__('optax').adam(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, extras, opt, rng):
    (loss, (metrics, extras)), g = jax.value_and_grad(m.loss_fn, has_aux=True)(params, extras, {'image': images},
                                                                                rng, 0)
    updates, opt = tx.update(g, opt, params)
    return __import__('optax').apply_updates(params, updates), extras, opt, metrics

  first = None
  stats0 = extras['batch_stats']
  for i in range(25):
    params, extras, opt, metrics = step(params, extras, opt, jax.random.key(i))
    first = first or float(metrics['loss'])
  assert float(metrics['loss']) < 0.5 * first
  assert not np.allclose(np.asarray(stats0['encoder']['stem_bn']['mean']),
                         np.asarray(extras['batch_stats']['encoder']['stem_bn']['mean']))


def test_frozen_features_and_fine_tuning_use_the_patch_network():
  m = _method()
  assert m.encoder.depths == (1, 1, 1) and m.full_encoder.depths == (1, 1, 1, 1)
  assert m.finetune_fresh() == ('stages_3',) and m.num_layers == 5 and m.layer_id(('stages_3', 'x')) == 4
  images, params, extras, _, _ = _setup(m)
  out = m.encode(m.eval_params(params, extras), {'image': images})
  assert out['pooled'].shape == (3, 16) and out['feature_map'].shape == (3, 4, 4, 16)
  assert _method(patch_stages=4).finetune_fresh() == ()


def test_fine_tuning_merges_the_pre_trained_stages_with_fresh_ones():
  from mim_jax.eval import finetune, pretrained

  m = _method()
  images, params, extras, _, _ = _setup(m)
  pre = pretrained.Pretrained(m.config, m, m.eval_params(params, extras), 1, '/x', None)
  full = nn.meta.unbox(jax.eval_shape(lambda: m.full_encoder.init(jax.random.key(0), images)))
  got = finetune.pretrained_encoder_params(pre, full['params'])
  assert sorted(got) == sorted(k for k in full['params'] if k != 'stages_3')
  assert sorted(finetune.without_fresh(pre, full['batch_stats'])) == sorted(extras['batch_stats']['encoder'])
  other = _method(patch_stages=2)
  pre2 = pretrained.Pretrained(other.config, other, {'encoder': {}, 'batch_stats': {}}, 1, '/x', None)
  with pytest.raises(ValueError, match='missing'):
    finetune.pretrained_encoder_params(pre2, full['params'])


def test_bad_settings_get_one_line_errors():
  with pytest.raises(ValueError, match='patch_size=5 must divide'):
    _method(patch_size=5)
  with pytest.raises(ValueError, match='num_targets=16'):
    _method(num_targets=16)
  with pytest.raises(ValueError, match='patch_stages must be in'):
    _method(patch_stages=5)
  with pytest.raises(ValueError, match='negatives must be one of'):
    _method(negatives='dataset')
  with pytest.raises(ValueError, match="selfie draws its targets uniformly"):
    _method(mask='block')
  with pytest.raises(ValueError, match='first stages of a ResNet'):
    _method(encoder={'name': 'convnext', 'depths': (1, 1), 'dims': (8, 16), 'patch_size': 2})


def test_recipes_build_and_validate():
  for path, arg in (('configs/selfie/digits.py', None), ('configs/selfie/digits.py', 'tiny'),
                    ('configs/selfie/in1k.py', 'cpu')):
    validate(load_config(path, arg))
  assert load_config('configs/selfie/digits.py', 'batch_negatives').selfie.negatives == 'batch'
  r50 = load_config('configs/selfie/in1k.py')
  assert (r50.model.encoder.variant, r50.selfie.patch_size, r50.selfie.patch_stages) == ('50', 32, 3)
  ft = load_config('configs/selfie/finetune_digits.py')
  assert ft.task == 'finetune' and ft.train_fraction == 0.1 and ft.model.encoder.name == 'resnet'
  with pytest.raises(ValueError, match='unknown argument'):
    load_config('configs/selfie/digits.py', 'huge')


@pytest.mark.slow
def test_pretrain_then_fine_tune_from_a_tenth_of_the_labels(tmp_path):
  from mim_jax import workdir as workdir_lib
  from mim_jax.eval import tasks
  from mim_jax.train import loop

  pre_dir, ft_dir = str(tmp_path / 'pre'), str(tmp_path / 'ft')
  loop.train(load_config('configs/selfie/digits.py', 'tiny'), pre_dir)
  ft = load_config('configs/selfie/finetune_digits.py', 'tiny')
  ft.init = pre_dir
  # One step at warmup's lr 0: the checkpoint holds the fine-tune's starting params.
  ft.total_steps, ft.warmup_steps, ft.eval_every_steps, ft.checkpoint.every_steps = 1, 1, 0, 1
  result = tasks.run(ft, ft_dir)
  assert result['finetune/train_examples'] == 144  # 10% of the 1437 training digits, class-stratified
  pre_params = workdir_lib.read_params(pre_dir)[0]['encoder']
  params = workdir_lib.read_params(ft_dir, directory=os.path.join(ft_dir, 'finetune_checkpoints'))[0]['encoder']
  assert set(params) == set(pre_params) | {'stages_3'}
  jax.tree.map(np.testing.assert_array_equal, {k: params[k] for k in pre_params}, pre_params)
  assert float(np.abs(params['stages_3']['blocks_0']['conv1']['kernel']).max()) > 0
