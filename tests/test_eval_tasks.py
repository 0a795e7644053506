"""Evaluation tasks end to end on the digits (tiny encoders): linear probe + k-NN, fine-tune, the summary they
share, the report over it; loading a converted checkpoint file; config merging and clear errors."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from mim_jax import report
from mim_jax.eval import pretrained, tasks

TINY = dict(variant=None, patch_size=4, width=32, depth=1, num_heads=2, mlp_ratio=2.0)


def _tiny(c):
  c.model.encoder.update(TINY)
  return c


def _tiny_probe(arg='digits'):
  c = _tiny(load_config('configs/eval/linear_probe.py', arg))
  c.linear_probe.epochs, c.linear_probe.warmup_epochs = 4, 1
  c.max_train_examples, c.max_eval_examples = 400, 200
  return c


def test_linear_probe_and_knn_on_a_random_encoder_write_the_summary_the_report_reads(tmp_path, capsys):
  workdir = str(tmp_path / 'random_init')
  lp = _tiny_probe()
  lp.random_init = True
  out = tasks.run(lp, workdir)
  for key in ('linear_probe/top1', 'linear_probe/top5', 'knn/top1', 'knn/top5'):
    assert 0.0 <= out[key] <= 1.0
  # 10 balanced classes: even a random 32-wide encoder is far above chance (0.1) with k-NN on 400 digits.
  assert out['knn/top1'] > 0.3
  assert out['init'] == 'random' and out['method'] == 'none' and out['checkpoint_step'] is None
  assert len(out['linear_probe/config_hash']) == 12
  assert os.path.exists(os.path.join(workdir, 'linear_probe_config.json'))
  capsys.readouterr()
  assert report.main([workdir]) == 0
  header, _, row = capsys.readouterr().out.splitlines()[:3]
  assert 'linear_probe/top1' in header and 'knn/top1' in header
  assert f'{100 * out["knn/top1"]:.1f}' in row


@pytest.mark.slow
def test_pretrain_then_probe_and_finetune_from_the_workdir(tmp_path, capsys):
  from mim_jax import main
  from mim_jax import workdir as workdir_lib

  pre_dir, eval_dir = str(tmp_path / 'pre'), str(tmp_path / 'eval')
  pre_cfg = load_config('configs/mae/digits.py', 'tiny')
  pre_cfg.eval.enabled = False
  main.run(pre_cfg, pre_dir)
  pre_params, step = workdir_lib.read_params(pre_dir)

  lp = _tiny_probe()
  lp.init = pre_dir
  cached = main.run(lp, eval_dir)
  assert cached['checkpoint_step'] == step and cached['init'] == os.path.abspath(pre_dir)
  lp.cache_features, lp.data.augment, lp.knn.enabled = False, 'rrc_flip', False  # the augmented, streamed probe
  streamed = main.run(lp, str(tmp_path / 'streamed'))
  assert 0.0 <= streamed['linear_probe/top1'] <= 1.0

  from mim_jax.eval import finetune
  ft = load_config('configs/eval/finetune_digits.py', 'tiny')
  ft.init = pre_dir
  pre = pretrained.load(ft)
  model = finetune.build_model(ft, pre, 10)
  expected = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 1)))['params'])
  loaded = finetune.pretrained_encoder_params(pre, expected['encoder'])
  np.testing.assert_array_equal(loaded['blocks_0']['attn']['qkv']['kernel'],
                                pre_params['encoder']['blocks_0']['attn']['qkv']['kernel'])
  first = main.run(ft, eval_dir)
  assert 0.0 <= first['finetune/top1'] <= first['finetune/top5'] <= 1.0 and first['finetune/steps'] == 6
  again = main.run(ft, eval_dir)  # resumes the finished fine-tune: evaluates the same params again
  assert again['finetune/top1'] == first['finetune/top1']
  with open(os.path.join(eval_dir, 'summary.json')) as f:
    summary = json.load(f)
  assert {'linear_probe/top1', 'knn/top1', 'finetune/top1', 'finetune/config_hash'} <= set(summary)
  assert os.path.exists(os.path.join(eval_dir, 'finetune_loss.png'))


def test_init_from_a_converted_official_file(tmp_path):
  from mim_jax import methods
  from mim_jax.interop.official_mae import to_official

  pre_cfg = load_config('configs/mae/digits.py', 'tiny')
  method = methods.build(pre_cfg, methods.Facts.for_images((16, 16, 1)))
  params = nn.meta.unbox(jax.jit(method.init)(jax.random.PRNGKey(3), method.example_batch(2))[0])
  official = to_official(jax.device_get(params), patch_size=4, grid_hw=(4, 4))
  path = str(tmp_path / 'mae_tiny.npz')
  np.savez(path, **{f'param/{k}': v for k, v in official.items()})

  c = _tiny(load_config('configs/eval/knn.py', 'digits'))
  c.init = path
  pre = pretrained.load(c)
  assert pre.source == os.path.abspath(path) and pre.step is None
  got = dict(jax.tree_util.tree_leaves_with_path(pre.encoder_params()))
  for key, want in jax.tree_util.tree_leaves_with_path(params['encoder']):
    np.testing.assert_array_equal(got[key], want)

  from safetensors.numpy import save_file
  from mim_jax.utils.tree_paths import flatten_with_names
  native = str(tmp_path / 'mae_tiny.safetensors')  # mim_jax names joined by '/'
  save_file({f'encoder/{k}': np.asarray(v) for k, v in flatten_with_names(params['encoder'])}, native)
  c.init = native
  got = dict(jax.tree_util.tree_leaves_with_path(pretrained.load(c).encoder_params()))
  for key, want in jax.tree_util.tree_leaves_with_path(params['encoder']):
    np.testing.assert_array_equal(got[key], want)

  c.model.encoder.width = 64
  with pytest.raises(ValueError, match='does not fit the configured encoder'):
    pretrained.load(c)


def test_merge_data_config_keeps_the_pretraining_fields_of_the_same_dataset():
  pre = load_config('configs/mae/vit_base_in1k.py', 'cpu').data  # digits at 32x32
  from mim_jax.eval.configs import data_overrides
  merged = pretrained.merge_data_config(pre, data_overrides(augment='none'))
  assert merged.image_size == 32 and merged.augment == 'none' and merged.name == 'mim_digits'
  other = pretrained.merge_data_config(pre, data_overrides(name='imagenet2012'))
  assert other.image_size == 224  # another dataset starts from its own defaults
  with pytest.raises(ValueError, match='no dataset'):
    pretrained.merge_data_config(None, data_overrides())


def test_clip_overrides_apply_field_by_field_to_a_video_workdir_only():
  from mim_jax.eval.configs import data_overrides
  video = load_config('configs/videomae/moving_digits.py', 'tiny').data
  eval_data = data_overrides()
  eval_data.clips.label = 'direction'
  merged = pretrained.merge_data_config(video, eval_data)
  assert merged.clips.label == 'direction' and merged.clips.sprite == video.clips.sprite
  assert pretrained.merge_data_config(video, data_overrides()).clips.label == 'class'
  with pytest.raises(ValueError, match='applies to video workdirs'):
    pretrained.merge_data_config(load_config('configs/mae/digits.py', 'tiny').data, eval_data)


def test_read_pretrain_config_restores_tuples_and_defaults(tmp_path):
  c = load_config('configs/mae/digits.py', 'tiny')
  stored = json.loads(c.to_json_best_effort())
  del stored['monitors']  # a run from before the field existed
  (tmp_path / 'config.json').write_text(json.dumps(stored))
  back = pretrained.read_pretrain_config(str(tmp_path))
  assert back.data.crop_scale == (0.6, 1.0) and back.model.encoder.width == 32 and dict(back.monitors) == {}
  with pytest.raises(FileNotFoundError, match='no config.json'):
    pretrained.read_pretrain_config(str(tmp_path / 'nowhere'))


def test_clear_errors(tmp_path):
  c = load_config('configs/eval/linear_probe.py', 'digits')
  with pytest.raises(ValueError, match='config.init is not set'):
    tasks.run(c, str(tmp_path))
  c.init = str(tmp_path / 'missing')
  with pytest.raises(FileNotFoundError, match='does not exist'):
    tasks.run(c, str(tmp_path))
  c.random_init = True
  c.data.augment = 'rrc_flip'
  with pytest.raises(ValueError, match="needs config.data.augment='none'"):
    tasks.run(c, str(tmp_path))
  c.task = 'segmentation'
  with pytest.raises(ValueError, match='not an evaluation task'):
    tasks.run(c, str(tmp_path))


@pytest.mark.slow
def test_features_on_a_2x2_mesh_equal_one_device():
  from conftest import run_python
  out = run_python("""
import sys; sys.path.insert(0, 'tests')
import jax, numpy as np
from conftest import load_config
from mim_jax.eval import frozen
from mim_jax.train import sharding as shd
c = load_config('configs/eval/knn.py', 'digits')
c.model.encoder.update(dict(variant=None, patch_size=4, width=32, depth=1, num_heads=2, mlp_ratio=2.0))
c.random_init = True
c.mesh.data, c.mesh.fsdp = 2, 2
sharded = frozen.frozen_encoder(c)
assert 'fsdp' in str(sharded.params['encoder']['blocks_0']['attn']['qkv']['kernel'].sharding.spec)
a, la = sharded.features('test', 100, 64)
make_mesh = shd.make_mesh
shd.make_mesh = lambda d, f: make_mesh(1, 1, devices=jax.devices()[:1])
b, lb = frozen.frozen_encoder(c).features('test', 100, 64)
print(a.shape, float(np.abs(a - b).max()), bool((la == lb).all()))
""", devices=4)
  *_, diff, same_labels = out.split()
  assert '(100, 32)' in out and float(diff) < 1e-5 and same_labels == 'True'
