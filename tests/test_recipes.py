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
