"""Other backbones in the evaluation paths: ConvNets and iLLaMA start evaluations from random init or from their
official weight files (timm's ResNet / ConvNeXt names, iLLaMA's), probes read their feature contract, and
fine-tuning keeps BatchNorm statistics in the train state and follows the soft-mask schedule."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import FIXTURE_ROOT, load_config
from mim_jax.data import mixup as mixup_lib
from mim_jax.eval import finetune, pretrained
from mim_jax.interop import timm_convnets
from mim_jax.interop.parity import load as load_fixture
from mim_jax.models.classifier import Classifier
from mim_jax.models.encoders import build_encoder

TINY_RESNET = dict(name='resnet', block='basic', depths=(1, 1, 1, 1), widths=(4, 8, 8, 16), stem='small',
                   stem_width=4)


def _random_like(abstract, seed=0):
  """Random values of an init's shapes (compiling a ConvNet's random initializers takes ~20 s on 2 cores; the
  production init path is tested once, in the random-init test)."""
  rng = np.random.default_rng(seed)
  fill = lambda p, a: (rng.uniform(0.5, 1.5, a.shape) if p[-1].key == 'var' else
                       0.3 * rng.standard_normal(a.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(fill, nn.meta.unbox(abstract))


def _eval_config(**fields):
  return ml_collections.ConfigDict({'seed': 0, 'data': {'name': 'mim_digits'}, **fields})


@pytest.mark.parametrize('encoder,method', [
    ({'patch_size': 4, 'width': 32, 'depth': 1, 'num_heads': 2}, 'mae'),  # MAE can build it: its random stream
    (TINY_RESNET, 'none'),
    ({'variant': 'illama_tiny/4'}, 'none'),  # a causal mask over MAE's shuffled tokens is undefined
    ({'patch_size': 4, 'width': 32, 'depth': 1, 'num_heads': 2, 'class_token': 'none'}, 'none'),
])
def test_an_encoder_without_pretraining_gets_a_method_that_can_hold_it(encoder, method):
  cfg = _eval_config(random_init=True, model={'encoder': encoder})
  pre, _ = pretrained._pretrain_config_for(cfg)
  assert pre.method == method


def test_random_init_convnet_features_use_its_batchnorm_statistics():
  pre = pretrained.load(_eval_config(random_init=True, model={'encoder': TINY_RESNET}))
  assert pre.method.name == 'none' and 'encoder_batch_stats' in pre.params
  batch = {'image': np.random.default_rng(0).normal(size=(3, 16, 16, 1)).astype(np.float32)}
  feats = pre.method.feature(pre.params, batch, 'pooled')
  assert feats.shape == (3, 16) and np.all(np.isfinite(feats))
  stats = jax.tree.map(lambda v: v + 1.0, pre.params['encoder_batch_stats'])  # the frozen encoder reads them
  moved = pre.method.feature({**pre.params, 'encoder_batch_stats': stats}, batch, 'pooled')
  assert not np.allclose(feats, moved)
  with pytest.raises(ValueError, match="feature='pooled'"):
    pre.method.feature(pre.params, batch, 'cls')
  with pytest.raises(ValueError, match='nothing to pre-train'):
    pre.method.loss_fn(pre.params, {}, batch, jax.random.key(0), 0)


def test_a_timm_resnet_file_is_an_evaluation_init(tmp_path):
  # A random digits-shaped ResNet written under timm's names, read back through config.init.
  encoder = build_encoder(TINY_RESNET)
  variables = _random_like(jax.eval_shape(encoder.init, jax.random.key(3), jnp.zeros((1, 16, 16, 1))))
  stats = variables['batch_stats']
  state = timm_convnets.resnet_to_timm(variables['params'], stats)
  path = str(tmp_path / 'resnet_timm.npz')
  np.savez(path, **state)
  pre = pretrained.load(_eval_config(init=path, model={'encoder': TINY_RESNET}))
  np.testing.assert_allclose(pre.params['encoder_batch_stats']['stem_bn']['mean'], stats['stem_bn']['mean'])
  x = np.random.default_rng(1).normal(size=(2, 16, 16, 1)).astype(np.float32)
  ref = encoder.apply({'params': variables['params'], 'batch_stats': stats}, x)['pooled']
  np.testing.assert_allclose(pre.method.feature(pre.params, {'image': x}, 'pooled'), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', ['resnet18_small.npz', 'convnext_p2_s1.npz'])
def test_timm_fixture_files_load_through_the_checkpoint_reader(name):
  path = str(FIXTURE_ROOT / 'timm_convnets' / name)
  fx = load_fixture(path)
  encoder = build_encoder(fx.config().model.encoder)
  loaded = pretrained.load_checkpoint_file(path, encoder)
  variables = {'params': loaded['encoder'], **({'batch_stats': loaded['encoder_batch_stats']}
                                              if 'encoder_batch_stats' in loaded else {})}
  (images,) = fx.need('inputs', 'images')
  x = images.transpose(0, 2, 3, 1) if images.shape[1] == 3 else images
  (pooled,) = fx.need('outputs', 'pooled')
  np.testing.assert_allclose(encoder.apply(variables, x)['pooled'], pooled, atol=1e-5 + 1e-4 * np.abs(pooled).max())


def test_an_official_illama_file_is_read_with_its_names():
  path = str(FIXTURE_ROOT / 'official_illama' / 'illama_official_rate03.npz')
  fx = load_fixture(path)
  encoder = build_encoder(fx.config().model.encoder)
  loaded = pretrained.load_checkpoint_file(path, encoder)
  assert set(loaded) == {'encoder'}  # the classifier head is not the encoder's
  images, features = fx.inputs['images'], fx.outputs['features']
  with jax.default_matmul_precision('highest'):
    cls = encoder.apply({'params': loaded['encoder']}, images.transpose(0, 2, 3, 1), soft_mask_rate=0.3)['cls']
  np.testing.assert_allclose(cls, features, atol=1e-5 + 1e-4 * np.abs(features).max())


def test_finetuning_keeps_batchnorm_statistics_out_of_the_gradients():
  model = Classifier(build_encoder(TINY_RESNET), num_classes=3, global_pool=True, fc_norm=False)
  objective = finetune.FinetuneObjective(model, mixup_lib.MixupConfig(prob=0.0), (16, 16, 1))
  batch = {'image': jnp.asarray(np.random.default_rng(0).normal(size=(4, 16, 16, 1)), jnp.float32),
           'label': jnp.array([0, 1, 2, 1])}
  params, extras = _random_like(jax.eval_shape(objective.init, jax.random.key(0), batch))
  assert 'fc_norm' not in params and 'batch_stats' in extras
  leaves = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  assert not any('mean' in k or "'var'" in k for k in leaves)
  loss_fn = jax.jit(jax.value_and_grad(lambda p: objective.loss_fn(p, extras, batch, jax.random.key(1), 0),
                                      has_aux=True))
  (_, (_, updated)), grads = loss_fn(params)
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  before, after = (e['batch_stats']['encoder']['stem_bn']['mean'] for e in (extras, updated))
  assert not np.allclose(before, after)  # a train step moves the running mean
  logits = jax.jit(objective.logits)((params, updated, jnp.int32(0)), batch)
  assert logits.shape == (4, 3)


def test_finetuning_follows_the_soft_mask_schedule():
  encoder = build_encoder({'variant': 'illama_tiny/4', 'width': 32, 'depth': 2, 'num_heads': 2,  # CLS last: one block's
                           # CLS row is all ones under the causal mask; the patches it reads in block 2 are not
                           'swiglu_multiple_of': 32})
  cfg = ml_collections.ConfigDict({'soft_mask': {'mode': 'soft', 'rate': 1.0, 'cutoff_fraction': 0.5}})
  schedule = finetune.soft_mask_from_config(cfg, encoder, steps_per_epoch=10, total=20)
  assert [float(schedule(s)) for s in (0, 9, 10, 19)] == [1.0, 1.0, 0.0, 0.0]
  causal = finetune.soft_mask_from_config(
      ml_collections.ConfigDict({'soft_mask': {'mode': 'standard', 'rate': 0.0}}), encoder, 10, 20)
  assert float(causal(0)) == 0.0 and float(causal(20)) == 0.0
  objective = finetune.FinetuneObjective(Classifier(encoder, 3, global_pool=False),
                                         mixup_lib.MixupConfig(prob=0.0), (16, 16, 3), soft_mask=schedule)
  batch = {'image': jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 3)), jnp.float32),
           'label': jnp.array([0, 2])}
  params, extras = objective.init(jax.random.key(0), batch)
  early, late = (objective.logits((params, extras, jnp.int32(s)), batch) for s in (0, 15))
  assert not np.allclose(early, late)  # evaluation uses the rate of the step it evaluates
  _, (metrics, _) = objective.loss_fn(params, extras, batch, jax.random.key(1), jnp.int32(15))
  assert float(metrics['soft_mask_rate']) == 0.0
  with pytest.raises(ValueError, match='exactly one of cutoff_epochs'):
    finetune.soft_mask_from_config(ml_collections.ConfigDict({'soft_mask': {'mode': 'soft'}}), encoder, 10, 20)
  with pytest.raises(ValueError, match='no soft causal mask'):
    finetune.soft_mask_from_config(cfg, build_encoder({'patch_size': 4, 'width': 32, 'depth': 1, 'num_heads': 2}),
                                   10, 20)


@pytest.mark.slow  # two short fine-tunes end to end (~2 min on 2 cores)
@pytest.mark.parametrize('config', ['configs/convnets/fashion_mnist.py', 'configs/illama/fashion_mnist.py'])
def test_backbone_configs_train_end_to_end_on_digits(tmp_path, config):
  c = load_config(config, 'tiny')
  c.data.name = 'mim_digits'  # Fashion-MNIST is optional on CI; the bundled digits are not (16 x 16 px)
  if 'illama' in config:
    c.model.encoder.patch_size = 4
  out = finetune.run(c, str(tmp_path))
  assert 0.0 <= out['finetune/top1'] <= 1.0 and out['method'] == 'none' and out['finetune/steps'] == 6
  # The fine-tuned classifier exports with its description: its features are the trained encoder's.
  import mim_jax
  from mim_jax import interop
  from mim_jax import workdir as workdir_lib

  ckpt = interop.load(str(tmp_path), 'mim_jax')
  assert ckpt.spec.encoder == ('vit' if 'illama' in config else 'resnet') and ckpt.spec.num_classes == 10
  (params, extras), _ = workdir_lib.read_state_parts(str(tmp_path), ('params', 'extras'),
                                                     directory=str(tmp_path / 'finetune_checkpoints'))
  images = np.random.default_rng(0).standard_normal((3, 16, 16, 1)).astype(np.float32)
  variables = {'params': params['encoder'], **({'batch_stats': extras['batch_stats']['encoder']}
                                               if 'batch_stats' in extras else {})}
  rate = {'soft_mask_rate': 0.0} if 'illama' in config else {}  # the schedule ends causal
  with jax.default_matmul_precision('highest'):
    ref = ckpt.spec.build_encoder().apply(variables, images, **rate)['pooled']
  np.testing.assert_allclose(mim_jax.features(str(tmp_path), images)['pooled'], ref, atol=1e-5)
  assert ('encoder_batch_stats' in ckpt.params) == ('illama' not in config)
