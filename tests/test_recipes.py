"""The paper recipes are exact where the paper is explicit, and their ':cpu' variants run end to end."""

import pytest

from conftest import load_config
from mim_jax.train import loop


@pytest.mark.parametrize('name,variant,epochs', [('base', 'base/16', 800.0), ('large', 'large/16', 1600.0),
                                                 ('huge', 'huge/14', 1600.0)])
def test_mae_paper_recipe_fields(name, variant, epochs):
  c = load_config(f'configs/mae/vit_{name}_in1k.py')
  assert c.model.encoder.variant == variant and c.epochs == epochs and c.warmup_epochs == 40
  assert c.batch_size == 4096 and c.optimizer.base_lr == 1.5e-4 and c.optimizer.weight_decay == 0.05
  assert (c.optimizer.b1, c.optimizer.b2) == (0.9, 0.95) and c.mask.ratio == 0.75 and c.norm_pix_loss
  assert (c.model.decoder.width, c.model.decoder.depth, c.model.decoder.num_heads) == (512, 8, 16)
  assert c.data.image_size == 224 and tuple(c.data.crop_scale) == (0.2, 1.0) and c.data.hflip
  assert load_config(f'configs/mae/vit_{name}_in1k.py', 'epochs=1600').epochs == 1600.0
  with pytest.raises(ValueError, match='unknown config argument'):
    load_config(f'configs/mae/vit_{name}_in1k.py', 'gpu')


def test_cpu_variant_runs_the_recipe_code_path(tmp_path):
  c = load_config('configs/mae/vit_base_in1k.py', 'cpu')
  c.eval.enabled = False
  result = loop.train(c, str(tmp_path))
  assert int(result.state.step) == c.total_steps
  assert (tmp_path / 'checkpoints' / str(c.total_steps)).is_dir()


def test_fashion_mnist_large_teacher_changes_only_the_encoder():
  base, large = load_config('configs/mae/fashion_mnist.py'), load_config('configs/mae/fashion_mnist.py', 'large')
  assert (large.model.encoder.width, large.model.encoder.depth, large.model.encoder.num_heads) == (192, 6, 6)
  large.model.encoder = base.model.encoder
  assert large.to_dict() == base.to_dict()
  with pytest.raises(ValueError, match="':large'"):
    load_config('configs/mae/fashion_mnist.py', 'huge')


@pytest.mark.parametrize('size,mix,drop_path,schedule,cutoff,warmup', [
    ('tiny', (0.1, 0.1), 0.0, 'constant', 50.0, 5.0), ('small', (0.5, 0.5), 0.1, 'linear', 50.0, 5.0),
    ('base', (0.95, 1.0), 0.4, 'linear', 25.0, 50.0)])
def test_illama_in1k_recipes_follow_the_official_scripts(size, mix, drop_path, schedule, cutoff, warmup):
  c = load_config(f'configs/illama/illama_{size}_in1k.py')
  assert c.model.encoder.variant == f'illama_{size}/16' and c.random_init and not c.global_pool
  assert c.epochs == 300 and c.warmup_epochs == warmup and c.batch_size == 4096
  assert c.optimizer.base_lr * 4096 / 256 == pytest.approx(4e-3) and c.optimizer.layer_decay == 1.0
  assert (c.mixup.mixup_alpha, c.mixup.cutmix_alpha) == mix and c.drop_path == drop_path
  assert dict(c.soft_mask) == {'mode': 'soft', 'rate': 1.0, 'schedule': schedule, 'cutoff_epochs': cutoff}


def test_illama_fashion_mnist_modes_differ_only_in_the_soft_mask():
  soft = load_config('configs/illama/fashion_mnist.py')
  assert soft.soft_mask.to_dict() == {'mode': 'soft', 'rate': 1.0, 'schedule': 'constant', 'cutoff_fraction': 0.25}
  assert soft.model.encoder.causal_mask == 'soft' and soft.model.encoder.class_token == 'last'
  for mode, expected in (('causal', {'mode': 'standard', 'rate': 0.0}), ('bidirectional', {'mode': 'standard',
                                                                                            'rate': 1.0})):
    other = load_config('configs/illama/fashion_mnist.py', mode)
    assert other.soft_mask.to_dict() == expected
    other.soft_mask = soft.soft_mask
    assert other.to_dict() == soft.to_dict()
  vit = load_config('configs/eval/finetune_fashion_mnist.py')  # the ViT it is compared with: same shape, recipe
  assert {k: soft.model.encoder[k] for k in ('patch_size', 'width', 'depth', 'num_heads')} == {
      k: vit.model.encoder[k] for k in ('patch_size', 'width', 'depth', 'num_heads')}
  assert soft.optimizer.to_dict() == vit.optimizer.to_dict() and soft.epochs == vit.epochs
  with pytest.raises(ValueError, match='pick one soft-mask mode'):
    load_config('configs/illama/fashion_mnist.py', 'soft,causal')


def test_spark_in1k_recipe_follows_the_official_arguments():
  from mim_jax import config as config_lib

  c = load_config('configs/spark/in1k.py')
  o = c.optimizer
  assert (c.method, c.batch_size, c.epochs, c.warmup_epochs, c.mask.ratio) == ('spark', 4096, 1600.0, 40.0, 0.6)
  assert (o.name, o.base_lr, o.b2, o.weight_decay, o.weight_decay_end, o.grad_clip_norm) == (
      'lamb', 2e-4, 0.95, 0.04, 0.2, 5.0)
  assert o.min_lr == pytest.approx(0.001 * 2e-4 * 4096 / 256)
  assert c.model.encoder.variant == '50' and c.model.encoder.drop_path == 0.05 and c.spark.decoder_width == 768
  assert tuple(c.data.crop_scale) == (0.67, 1.0)
  convnext = load_config('configs/spark/in1k.py', 'convnext_small')
  assert convnext.model.encoder.name == 'convnext' and convnext.optimizer.b2 == 0.999
  assert convnext.model.encoder.drop_path == 0.2
  for path, arg in (('configs/spark/in1k.py', 'cpu'), ('configs/spark/fashion_mnist.py', 'tiny'),
                    ('configs/spark/fashion_mnist.py', None)):
    config_lib.validate(load_config(path, arg))
  assert load_config('configs/spark/fashion_mnist.py', 'dense').spark.sparse is False
  with pytest.raises(ValueError, match='unknown argument'):
    load_config('configs/spark/in1k.py', 'resnet18')
