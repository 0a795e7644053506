"""The method configs (SimMIM, HPM, the masking ablation): they load, validate and build their method; the
digits ones keep the quickstart's budget; each runs end to end on the bundled data (slow)."""

import subprocess
import sys

import jax
import pytest
from conftest import REPO, load_config

from mim_jax import config as config_lib
from mim_jax import methods
from mim_jax.train import optim

ABLATION = ('mae', 'simmim', 'hpm', 'block', 'colormae_red', 'colormae_blue', 'colormae_green', 'colormae_purple',
            'gmml')
VIT_B = [('configs/simmim/vit_base_in1k.py', None), ('configs/hpm/vit_base_in1k.py', None)] + [
    ('configs/ablation/vit_base_in1k.py', v) for v in ABLATION]
DIGITS = [('configs/simmim/digits.py', None), ('configs/hpm/digits.py', None)] + [
    ('configs/ablation/digits.py', v) for v in ABLATION]


def _arg(variant, extra):
  return ','.join(p for p in (variant, extra) if p) or None


@pytest.mark.parametrize('path,variant', VIT_B)
@pytest.mark.parametrize('extra', [None, 'cpu'])
def test_vit_base_configs_validate_and_build(path, variant, extra):
  c = load_config(path, _arg(variant, extra))
  config_lib.validate(c)
  shape = (32, 32, 1) if extra == 'cpu' else (224, 224, 3)
  method = methods.build(c, methods.Facts.for_images(shape))  # modules and the mask generator on the grid, no params
  assert method.name == c.method
  if extra is None:
    assert method.encoder.width == 768 and method.encoder.depth == 12 and method.encoder.patch_size == 16


def test_simmim_vit_base_is_the_paper_recipe():
  c = load_config('configs/simmim/vit_base_in1k.py')
  method = methods.build(c, methods.Facts.for_images((224, 224, 3)))
  assert method.masker.coarse_grid.height == 7 and method.masker.len_keep == 196 - 30 * 4  # 30 of 49 cells
  assert c.norm_pix_loss is False and c.model.encoder.drop_path == 0.1
  peak = optim.scaled_lr(c.optimizer.base_lr, c.batch_size)
  assert peak == pytest.approx(1e-4 * 2048 / 512)  # SimMIM's base lr scaled by batch / 512: 4e-4
  schedule = optim.make_schedule(c.optimizer, peak, 800 * 625, 10 * 625)  # 625 steps per epoch at 2048
  assert float(schedule(699 * 625)) == pytest.approx(peak) and float(schedule(700 * 625)) == pytest.approx(peak / 10)
  assert (c.optimizer.b2, c.optimizer.grad_clip_norm, c.warmup_epochs) == (0.999, 5.0, 10.0)
  assert tuple(c.data.crop_scale) == (0.67, 1.0) and c.data.hflip


def test_multistep_schedule_checks_its_settings():
  with pytest.raises(ValueError, match='milestones'):
    optim.warmup_multistep(1.0, 100, 10, [5])  # a milestone inside the warmup
  opt = config_lib.base_config().optimizer
  opt.schedule = 'step'
  with pytest.raises(ValueError, match='optimizer.schedule'):
    optim.make_schedule(opt, 1.0, 10, 1)


def test_hpm_vit_base_keeps_mae_recipe_and_the_ema_ramp_in_epochs():
  mae = load_config('configs/mae/vit_base_in1k.py')
  c = load_config('configs/hpm/vit_base_in1k.py')
  assert (c.batch_size, c.optimizer.base_lr, c.mask.ratio, c.epochs) == (mae.batch_size, mae.optimizer.base_lr,
                                                                          0.75, 800.0)
  assert c.hpm.ema_ramp_fraction == pytest.approx(100 / 800) and c.hpm.alpha_end == 0.5
  assert load_config('configs/hpm/vit_base_in1k.py', 'epochs=200').hpm.ema_ramp_fraction == pytest.approx(0.5)


@pytest.mark.parametrize('path,variant', DIGITS)
def test_digits_configs_keep_the_quickstart_budget(path, variant):
  quickstart = load_config('configs/mae/digits.py')
  c = load_config(path, variant)
  config_lib.validate(c)
  for key in ('batch_size', 'total_steps', 'warmup_steps', 'seed'):
    assert c[key] == quickstart[key], key
  assert c.optimizer.to_dict() == quickstart.optimizer.to_dict()
  assert c.model.encoder.to_dict() == quickstart.model.encoder.to_dict()
  assert c.eval.to_dict() == quickstart.eval.to_dict() and c.data.to_dict() == quickstart.data.to_dict()
  method = methods.build(c, methods.Facts.for_images((16, 16, 1)))
  info = method.masker(jax.random.key(0), 2)
  assert info.mask.shape == (2, 16)


FASHION = ABLATION + ('grid',)


@pytest.mark.parametrize('variant', FASHION)
def test_fashion_mnist_table_keeps_the_recipe_budget(variant):
  recipe = load_config('configs/mae/fashion_mnist.py')
  c = load_config('configs/ablation/fashion_mnist.py', variant)
  config_lib.validate(c)
  for key in ('batch_size', 'total_steps', 'warmup_steps', 'seed'):
    assert c[key] == recipe[key], key
  assert c.model.encoder.to_dict() == recipe.model.encoder.to_dict() and c.eval.to_dict() == recipe.eval.to_dict()
  assert c.data.name == 'fashion_mnist' and c.data.image_size == 28
  method = methods.build(c, methods.Facts.for_images((28, 28, 1)))
  assert method.masker(jax.random.key(0), 2).mask.shape == (2, (28 // c.model.encoder.patch_size) ** 2)


def test_mae_loss_on_all_patches():
  c = load_config('configs/mae/digits.py', 'tiny')
  images = jax.random.normal(jax.random.key(0), (4, 16, 16, 1))
  for loss_on in ('masked', 'all'):
    c.loss_on = loss_on
    method = methods.build(c, methods.Facts.for_images((16, 16, 1)))
    params, _ = method.init(jax.random.key(1), {'image': images})
    loss, _ = method.loss_fn(params, {}, {'image': images}, jax.random.key(2), 0)
    out = method.forward(params, images, method.masker(jax.random.key(2), 4))
    expected = out['loss'] if loss_on == 'masked' else out['loss_per_token'].mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5), loss_on
  assert float(out['loss']) != pytest.approx(float(out['loss_per_token'].mean()), rel=1e-3)
  c.loss_on = 'visible'
  with pytest.raises(ValueError, match="config.loss_on='visible'"):
    methods.build(c, methods.Facts.for_images((16, 16, 1)))


def test_bad_config_arguments_are_named():
  with pytest.raises(ValueError, match='exactly one variant'):
    load_config('configs/ablation/digits.py', 'tiny')
  with pytest.raises(ValueError, match='unknown argument'):
    load_config('configs/ablation/digits.py', 'simmim,gpu')
  with pytest.raises(ValueError, match='unknown argument'):
    load_config('configs/simmim/vit_base_in1k.py', 'tpu')


@pytest.mark.slow
@pytest.mark.parametrize('path,arg', [('configs/simmim/digits.py', 'tiny'), ('configs/hpm/digits.py', 'tiny'),
                                      ('configs/simmim/vit_base_in1k.py', 'cpu'),
                                      ('configs/hpm/vit_base_in1k.py', 'cpu'),
                                      ('configs/maskalign/fashion_mnist.py', 'tiny'),
                                      ('configs/maskalign/vit_base_in1k.py', 'cpu'),
                                      ('configs/cae/fashion_mnist.py', 'tiny'),
                                      ('configs/cae/vit_base_in1k.py', 'cpu')] + [
                                          ('configs/ablation/digits.py', f'{v},tiny') for v in ABLATION])
def test_config_runs_end_to_end(path, arg, tmp_path):
  from mim_jax.main import run
  c = load_config(path, arg)
  summary = run(c, str(tmp_path), 'train_eval')
  assert summary['method'] == c.method and summary['checkpoint_step'] == c.total_steps
  assert 0.0 <= summary['knn/top1'] <= 1.0 and (tmp_path / 'summary.json').exists()


def test_mistyped_config_override_is_a_one_line_error(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'mim_jax.main', '--config=configs/mae/digits.py',
                         '--config.eval.enabeld=False', f'--workdir={tmp_path}'], cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert 'Did you mean "enabled"' in proc.stderr and '--config.eval.enabeld' in proc.stderr
  assert not any(tmp_path.iterdir())  # nothing ran


def test_eval_without_a_checkpoint_is_one_line_and_creates_nothing(tmp_path):
  """--mode=eval on a workdir that never trained: the error alone (the checkpoint reader starts no background
  cleanup that could outlive the process and print over it), and no empty checkpoints/ left behind."""
  for _ in range(3):  # the race it guards against showed up in about one run in three
    proc = subprocess.run([sys.executable, '-m', 'mim_jax.main', '--config=configs/mae/digits.py', '--mode=eval',
                           f'--workdir={tmp_path}'], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert lines[-1] == f'error: no checkpoint under {tmp_path}/checkpoints; train first.', proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / 'checkpoints').exists()
