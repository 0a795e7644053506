"""configs/eval/*.py carry the papers' recipes and feed the evaluators' keyword arguments."""

import inspect

import pytest
from conftest import load_config

from mim_jax.eval.linear_probe import train_linear_probe
from mim_jax.data.mixup import MixupConfig


def test_linear_probe_paper_recipe_vit_base():
  c = load_config('configs/eval/linear_probe.py')
  lp = c.linear_probe
  assert c.task == 'linear_probe'
  assert (lp.batch_size, lp.base_lr, lp.epochs, lp.warmup_epochs) == (16384, 0.1, 90, 10)
  assert (lp.optimizer, lp.momentum, lp.trust_coefficient, lp.weight_decay) == ('lars', 0.9, 0.001, 0.0)
  assert (lp.bn_epsilon, lp.head_init_std) == (1e-6, 0.01)
  assert c.feature == 'cls' and c.model.encoder.variant == 'base/16'
  # RandomResizedCrop(224, 0.08-1, bicubic) + flip for training; resize 256 + center crop 224 for eval.
  assert c.data.augment == 'rrc_flip' and c.data.crop_scale == (0.08, 1.0) and c.data.hflip
  assert c.data.interpolation == 'bicubic' and c.data.eval_crop_pct == 0.875
  assert c.data.name is None and c.data.image_size is None  # taken from the pre-training run
  assert not c.cache_features
  assert (c.knn.k, c.knn.temperature) == (20, 0.07)


@pytest.mark.parametrize('arg,variant,epochs', [('large', 'large/16', 50), ('huge', 'huge/14', 50)])
def test_linear_probe_sizes(arg, variant, epochs):
  c = load_config('configs/eval/linear_probe.py', arg)
  assert c.model.encoder.variant == variant and c.linear_probe.epochs == epochs


def test_linear_probe_digits_and_cpu_cache_unaugmented_features():
  for arg in ('digits', 'base,cpu'):
    c = load_config('configs/eval/linear_probe.py', arg)
    assert c.cache_features and c.data.augment == 'none' and c.data.name == 'mim_digits'


@pytest.mark.parametrize('path,arg', [('configs/eval/linear_probe.py', 'giant'),
                                      ('configs/eval/linear_probe.py', 'digits,large'),
                                      ('configs/eval/finetune_vit_base.py', 'gpu'),
                                      ('configs/eval/finetune_digits.py', 'cpu'),
                                      ('configs/eval/finetune_fashion_mnist.py', 'digits')])
def test_bad_argument(path, arg):
  with pytest.raises(ValueError, match='bad argument'):
    load_config(path, arg)


def test_probe_block_matches_train_linear_probe_keywords():
  # The cached-feature path calls train_linear_probe(..., **config.linear_probe): every field must be a keyword.
  keywords = set(inspect.signature(train_linear_probe).parameters)
  assert set(load_config('configs/eval/linear_probe.py').linear_probe) <= keywords


@pytest.mark.parametrize('size,epochs,blr,decay,drop_path', [('base', 100, 5e-4, 0.65, 0.1),
                                                             ('large', 50, 1e-3, 0.75, 0.2),
                                                             ('huge', 50, 1e-3, 0.75, 0.3)])
def test_finetune_paper_recipes(size, epochs, blr, decay, drop_path):
  c = load_config(f'configs/eval/finetune_vit_{size}.py')
  o = c.optimizer
  assert c.task == 'finetune' and c.batch_size == 1024 and c.epochs == epochs and c.warmup_epochs == 5
  assert (o.base_lr, o.layer_decay, c.drop_path) == (blr, decay, drop_path)
  assert (o.b1, o.b2, o.weight_decay, o.min_lr) == (0.9, 0.999, 0.05, 1e-6)
  assert c.global_pool
  m = MixupConfig(**c.mixup)  # the block is MixupConfig's keywords
  assert (m.mixup_alpha, m.cutmix_alpha, m.label_smoothing, m.switch_prob, m.prob) == (0.8, 1.0, 0.1, 0.5, 1.0)


def test_finetune_cpu_and_digits_variants_are_small():
  cpu = load_config('configs/eval/finetune_vit_large.py', 'cpu')
  assert cpu.total_steps <= 10 and cpu.data.name == 'mim_digits' and cpu.model.encoder.variant is None
  digits = load_config('configs/eval/finetune_digits.py')
  assert digits.data.name == 'mim_digits' and not digits.data.hflip
  assert digits.model.encoder.patch_size == 4 and digits.model.encoder.depth == 4
  fashion = load_config('configs/eval/finetune_fashion_mnist.py')
  recipe = load_config('configs/mae/fashion_mnist.py')
  assert fashion.data.name == 'fashion_mnist' and fashion.data.hflip and not MixupConfig(**fashion.mixup).enabled
  assert dict(fashion.model.encoder) == {**dict(fashion.model.encoder), **dict(recipe.model.encoder)}
  assert load_config('configs/eval/finetune_fashion_mnist.py', 'tiny').total_steps <= 10


def test_data_block_accepts_only_pipeline_fields():
  from mim_jax.eval.configs import data_overrides
  with pytest.raises(KeyError, match='not a data-pipeline field'):
    data_overrides(crop_size=3)
