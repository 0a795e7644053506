"""MaskAlign: the attention-keep sampler's distribution, the teacher's CLS attention, the loss options and the
frozen teacher. (Tensor parity with the official code: tests/test_parity.py.)"""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax import masking
import ml_collections
from mim_jax.methods import Facts, build
from mim_jax.methods.maskalign import level_weights
from mim_jax.models.vit import ViTEncoder
from mim_jax.train import optim


def _sequential_probabilities(p, k):
  """Exact P(token i among the first k draws) and P(token i drawn first) without replacement."""
  p = np.asarray(p, np.float64) / np.sum(p)
  inclusion = np.zeros(len(p))
  for seq in itertools.permutations(range(len(p)), k):
    prob, left = 1.0, 1.0
    for i in seq:
      prob *= p[i] / left
      left -= p[i]
    inclusion[list(seq)] += prob
  return inclusion, p


def test_attention_keep_draws_like_sequential_sampling_without_replacement():
  importance = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
  n = 20000
  info = jax.jit(lambda r: masking.mask_from_importance(r, jnp.broadcast_to(importance, (n, 4)), 2))(
      jax.random.key(0))
  kept = np.asarray(info.ids_keep)
  inclusion, first = _sequential_probabilities(importance, 2)
  for name, observed, expected in (
      ('inclusion', np.bincount(kept.ravel(), minlength=4) / n, inclusion),
      ('first draw', np.bincount(kept[:, 0], minlength=4) / n, first)):
    sigma = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(observed - expected) <= 3 * sigma), (name, observed, expected)
  # The top-k of the importance alone (no Gumbel noise) would keep {2, 3} every time: far outside these bounds.
  assert inclusion[3] < 0.75 and inclusion[0] > 0.15
  # The mask agrees with the kept ids, and zero importance is kept last.
  assert np.all(np.asarray(info.mask).sum(1) == 2)
  zero = masking.mask_from_importance(jax.random.key(1), jnp.asarray([[0.0, 1.0, 1.0, 0.0]] * 64), 2)
  assert set(np.asarray(zero.ids_keep).ravel()) == {1, 2}


def test_cls_attention_is_the_last_blocks_head_mean_and_changes_nothing_else():
  enc = ViTEncoder(patch_size=4, width=16, depth=2, num_heads=2, attention_impl='einsum')
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  params = nn.meta.unbox(enc.init(jax.random.key(1), x)['params'])
  plain = enc.apply({'params': params}, x, hidden=(0,))
  out = enc.apply({'params': params}, x, hidden=(0,), cls_attention=True)
  np.testing.assert_array_equal(out['tokens'], plain['tokens'])
  attention = np.asarray(out['cls_attention'])
  assert attention.shape == (2, 4)
  # By hand from the last block's input: LayerNorm, the fused q/k/v, softmax over CLS's logits, mean over heads.
  h = np.asarray(plain['hidden'][0], np.float64)
  blk = jax.tree.map(lambda a: np.asarray(a, np.float64), params['blocks_1'])
  hn = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-6)
  hn = hn * blk['norm1']['scale'] + blk['norm1']['bias']
  qkv = hn @ blk['attn']['qkv']['kernel'] + blk['attn']['qkv']['bias']
  q, k, _ = np.split(qkv.reshape(2, 5, 3 * 16), 3, axis=-1)
  q, k = q.reshape(2, 5, 2, 8), k.reshape(2, 5, 2, 8)
  logits = np.einsum('bhd,bkhd->bhk', q[:, 0] / np.sqrt(8), k)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  np.testing.assert_allclose(attention, probs[:, :, 1:].mean(1), rtol=1e-4, atol=1e-6)


def test_level_weights_follow_the_authors_options():
  np.testing.assert_allclose(level_weights('top5', 12), [0] * 7 + [0.2] * 5)
  np.testing.assert_allclose(level_weights('mean', 4), [0.25] * 4)
  np.testing.assert_allclose(level_weights('out', 3), [0, 0, 1])
  np.testing.assert_allclose(level_weights('mid1', 3), [0, 1, 0])
  np.testing.assert_allclose(level_weights('linear_decay', 4), [0, 1 / 6, 2 / 6, 3 / 6])
  with pytest.raises(ValueError, match="'topK'"):
    level_weights('top13', 12)


def _config(**maskalign):
  return ml_collections.ConfigDict({
      'method': 'maskalign',
      'model': {'encoder': {'patch_size': 4, 'width': 16, 'depth': 2, 'num_heads': 2, 'mlp_ratio': 2.0}},
      'mask': {'name': 'random', 'ratio': 0.75},
      'maskalign': {'teacher_model': {'width': 24, 'depth': 2, 'num_heads': 2}, 'loss_weights': 'top1',
                    **maskalign},
  })


def test_config_errors_name_the_fix():
  with pytest.raises(ValueError, match="fusion='sum'"):
    build(_config(teacher_model={'width': 24, 'depth': 3, 'num_heads': 2}), Facts.for_images((16, 16, 3)))
  with pytest.raises(ValueError, match="mask.name must be 'random'"):
    cfg = _config()
    cfg.mask = {'name': 'block', 'ratio': 0.5}
    build(cfg, Facts.for_images((16, 16, 3)))
  with pytest.raises(ValueError, match='unknown config.maskalign field'):
    build(_config(fusoin='sum'), Facts.for_images((16, 16, 3)))


@pytest.mark.parametrize('fusion', ['linear', 'simple'])
def test_teacher_is_frozen_and_the_matrix_is_not_decayed(fusion):
  method = build(_config(fusion=fusion), Facts.for_images((16, 16, 3)))
  batch = {'image': jax.random.normal(jax.random.key(0), (2, 16, 16, 3))}
  params, extras = method.init(jax.random.key(1), batch)
  params = jax.tree.map(jnp.asarray, nn.meta.unbox(params))
  extras = {'teacher': jax.tree.map(jnp.asarray, method.load_external()['teacher'])}
  assert ('distill_weights' in params) == (fusion == 'linear')
  assert sorted(k for k in params if k.startswith('distill_heads')) == ['distill_heads_1']  # top1 of 2 levels

  def loss(p, t):
    return method.loss_fn(p, {'teacher': t}, batch, jax.random.key(2), 0)[0]

  value, (g_student, g_teacher) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, extras['teacher'])
  assert np.isfinite(value) and value > 0
  assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(g_teacher))
  assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(g_student['encoder']))
  mask = optim.weight_decay_mask(params, method.no_weight_decay)
  if fusion == 'linear':
    assert mask['distill_weights'] is False and mask['distill_heads_1']['kernel'] is True


def test_recipes_carry_the_papers_settings_and_every_field():
  from conftest import load_config
  from mim_jax import config as config_lib
  from mim_jax.methods.maskalign import maskalign_defaults

  c = load_config('configs/maskalign/vit_base_in1k.py')
  assert (c.batch_size, c.mask.ratio, c.epochs, c.warmup_epochs, c.optimizer.min_lr) == (1024, 0.7, 200.0, 20.0, 1e-5)
  assert c.model.encoder.drop_path == 0.1 and c.model.encoder.variant == 'base/16'
  assert (c.maskalign.fusion, c.maskalign.target_norm, c.maskalign.loss, c.maskalign.loss_weights,
          c.maskalign.keep) == ('linear', 'whiten', 'smoothl1', 'top5', 'attention')
  for path, arg, shape in (('configs/maskalign/vit_base_in1k.py', 'cpu', (32, 32, 1)),
                           ('configs/maskalign/fashion_mnist.py', 'tiny', (28, 28, 1)),
                           ('configs/maskalign/fashion_mnist.py', None, (28, 28, 1))):
    c = load_config(path, arg)
    assert set(c.maskalign) == set(maskalign_defaults()), path  # every field can be set on the command line
    config_lib.validate(c)
    if c.maskalign.teacher or c.maskalign.teacher_model:
      assert build(c, Facts.for_images(shape)).name == 'maskalign'
    else:  # the real recipe: the teacher is the run's to give
      with pytest.raises(ValueError, match='config.maskalign.teacher is empty'):
        build(c, Facts.for_images(shape))


@pytest.mark.slow
def test_a_fine_tuned_workdir_is_a_supervised_teacher(tmp_path):
  from conftest import load_config
  from mim_jax import main
  from mim_jax import workdir as workdir_lib
  from mim_jax.methods import teachers

  pre = load_config('configs/mae/fashion_mnist.py', 'tiny')
  pre.eval.enabled = False
  main.run(pre, str(tmp_path / 'mae'))
  ft = load_config('configs/eval/finetune_fashion_mnist.py', 'tiny')
  ft.init = str(tmp_path / 'mae')
  main.run(ft, str(tmp_path / 'finetuned'))
  teacher = teachers.load(str(tmp_path / 'finetuned'))
  saved, step = workdir_lib.read_params(str(tmp_path / 'finetuned'), None,
                                        directory=str(tmp_path / 'finetuned' / 'finetune_checkpoints'))
  assert teacher.supervised and teacher.step == step and not teacher.encoder.final_norm  # fc_norm replaced it
  np.testing.assert_array_equal(teacher.params['encoder']['blocks_0']['mlp']['fc1']['kernel'],
                                saved['encoder']['blocks_0']['mlp']['fc1']['kernel'])
  student = load_config('configs/maskalign/fashion_mnist.py', 'tiny')
  student.maskalign.teacher, student.maskalign.teacher_model = str(tmp_path / 'finetuned'), {}
  method = build(student, Facts.for_images((28, 28, 1)))
  assert 'norm' not in method.load_external()['teacher']


def test_a_converted_checkpoint_file_is_a_teacher(tmp_path):
  from conftest import load_config
  from mim_jax.methods import teachers
  from mim_jax.weights import file as weight_file
  from mim_jax.weights.spec import ModelSpec, random_checkpoint

  spec = ModelSpec(patch_size=4, width=24, depth=1, num_heads=2, image_size=(28, 28), channels=1)
  path = weight_file.save(random_checkpoint(spec, seed=3), str(tmp_path / 'teacher.safetensors'))
  teacher = teachers.load(path)
  assert (teacher.image_shape, teacher.encoder.width, teacher.supervised) == ((28, 28, 1), 24, False)
  student = load_config('configs/maskalign/fashion_mnist.py', 'tiny')
  student.maskalign.teacher, student.maskalign.teacher_model = path, {}
  method = build(student, Facts.for_images((28, 28, 1)))
  loaded = method.load_external()['teacher']
  np.testing.assert_array_equal(loaded['blocks_0']['mlp']['fc1']['kernel'],
                                teacher.params['encoder']['blocks_0']['mlp']['fc1']['kernel'])
  with pytest.raises(ValueError, match='neither a workdir'):
    teachers.load(str(tmp_path / 'missing'))


def test_drop_path_is_applied_in_training_only():
  method = build(_config(), Facts.for_images((16, 16, 3)))
  method.encoder = method.encoder.clone(drop_path=0.5)
  method.model = method.model.clone(encoder=method.encoder)
  batch = {'image': jax.random.normal(jax.random.key(0), (2, 16, 16, 3))}
  params = nn.meta.unbox(method.init(jax.random.key(1), batch)[0])
  extras = {'teacher': jax.tree.map(jnp.asarray, method.load_external()['teacher'])}
  loss = jax.jit(lambda r: method.loss_fn(params, extras, batch, r, 0)[0])
  assert float(loss(jax.random.key(2))) != float(loss(jax.random.key(3)))  # masks and drops differ
  targets = method.teacher_targets(extras['teacher'], batch['image'])
  info = method.masker(jax.random.key(4), 2)
  fixed = [float(method.forward(params, batch['image'], info, targets, r)['loss']) for r in (None, None)]
  dropped = [float(method.forward(params, batch['image'], info, targets, jax.random.key(k))['loss']) for k in (5, 6)]
  assert fixed[0] == fixed[1] and dropped[0] != dropped[1]
  with pytest.raises(ValueError, match='2 levels or more'):
    level_weights('linear_decay', 1)
