"""configs/eval/linear_probe.py carries the MAE paper's linear-probe recipe, and feeds train_linear_probe."""

import importlib.util
import inspect
import os

import pytest

from mim_jax.eval.linear_probe import train_linear_probe

_PATH = os.path.join(os.path.dirname(__file__), '..', 'configs', 'eval', 'linear_probe.py')


def _get_config(arg=None):
  spec = importlib.util.spec_from_file_location('linear_probe_config', _PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_paper_recipe_vit_base():
  c = _get_config()
  lp = c.linear_probe
  assert (lp.batch_size, lp.base_lr, lp.epochs, lp.warmup_epochs) == (16384, 0.1, 90, 10)
  assert (lp.optimizer, lp.momentum, lp.trust_coefficient, lp.weight_decay) == ('lars', 0.9, 0.001, 0.0)
  assert (lp.bn_epsilon, lp.head_init_std) == (1e-6, 0.01)
  assert c.feature == 'cls' and c.model.encoder.variant == 'base/16'
  assert c.train_augment.random_resized_crop.interpolation == 'bicubic'
  assert c.train_augment.horizontal_flip and not c.cache_features
  assert (c.eval_augment.resize.size, c.eval_augment.center_crop) == (256, 224)
  assert (c.knn.k, c.knn.temperature) == (20, 0.07)


@pytest.mark.parametrize('arg,variant,epochs', [('large', 'large/16', 50), ('huge,cpu', 'huge/14', 2)])
def test_sizes(arg, variant, epochs):
  c = _get_config(arg)
  assert c.model.encoder.variant == variant and c.linear_probe.epochs == epochs


def test_bad_argument():
  with pytest.raises(ValueError, match='bad argument'):
    _get_config('giant')


def test_probe_block_matches_train_linear_probe_keywords():
  # The driver calls train_linear_probe(..., **config.linear_probe): every field must be a keyword.
  keywords = set(inspect.signature(train_linear_probe).parameters)
  assert set(_get_config().linear_probe) <= keywords
