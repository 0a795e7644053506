"""The method contract end to end, with toy methods defined here (not in the library): each one is one class plus
a config, and trains with the library's loop, resumes bitwise, and is probed through the method.

* a two-view batch (``view1`` / ``view2`` from two augmentations of one image);
* a video-shaped batch (``video`` [T, H, W, C] clips, eval batches too);
* a non-ViT encoder registered here (a ConvNet: a feature map and no CLS token);
* an encoder whose CLS token is last;
* a student with a frozen teacher loaded from a saved workdir (never in the student's checkpoints, reloaded on
  resume), and the EMA update after the optimizer step.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import load_config

from mim_jax import masking, methods
from mim_jax import workdir as workdir_lib
from mim_jax.data import pipeline
from mim_jax.data.batch import Field
from mim_jax.eval import pretrain_eval
from mim_jax.losses import masked_mean, mse_per_token
from mim_jax.methods import teachers
from mim_jax.models.encoders import build_encoder, register_encoder
from mim_jax.models.vit import Block, sincos_2d_table
from mim_jax.targets import patchify
from mim_jax.train import loop
from mim_jax.train import state as state_lib

STEPS = 4


# ----------------------------------------------------------------------------------------------------------
# Toy encoders, registered from this file


@register_encoder('toy_conv')
class ToyConvEncoder(nn.Module):
  """A two-stage ConvNet: stride-2 stem, 3x3 conv stages; a feature map, no CLS token."""

  width: int = 16
  depth: int = 2

  @classmethod
  def from_config(cls, cfg, **runtime):
    del runtime  # precision / attention settings do not apply to this ConvNet
    return cls(width=int(cfg.get('width', 16)), depth=int(cfg.get('depth', 2)))

  @property
  def num_layers(self) -> int:
    return self.depth + 1

  def layer_id(self, names) -> int:
    for name in names:
      if name == 'stem':
        return 0
      if name.startswith('stage_'):
        return int(name[len('stage_'):]) + 1
    return self.depth + 1

  def for_finetuning(self, *, drop_path, pooled, dtype, remat):
    return self

  @nn.compact
  def __call__(self, images, deterministic: bool = True):
    x = nn.Conv(self.width, (2, 2), strides=(2, 2), name='stem')(images)
    for i in range(self.depth):
      x = x + nn.relu(nn.Conv(self.width, (3, 3), name=f'stage_{i}')(x))
    b, h, w, c = x.shape
    return {'cls': None, 'patch_tokens': x.reshape(b, h * w, c), 'pooled': x.mean(axis=(1, 2)), 'feature_map': x}


@register_encoder('toy_cls_last')
class ClsLastEncoder(nn.Module):
  """A small ViT that appends its CLS token after the patch tokens (as iLLaMA does)."""

  patch_size: int = 4
  width: int = 32
  depth: int = 1
  num_heads: int = 2

  @classmethod
  def from_config(cls, cfg, **runtime):
    del runtime
    return cls(**{k: cfg[k] for k in ('patch_size', 'width', 'depth', 'num_heads')})

  @property
  def num_layers(self) -> int:
    return self.depth + 1

  def layer_id(self, names) -> int:
    return 0 if names[0] in ('embed', 'cls_token', 'mask_token') else self.depth + 1

  def for_finetuning(self, *, drop_path, pooled, dtype, remat):
    return self

  @nn.compact
  def __call__(self, images, mask=None, deterministic: bool = True):
    gh, gw = images.shape[1] // self.patch_size, images.shape[2] // self.patch_size
    x = nn.Dense(self.width, name='embed')(patchify(images, self.patch_size))
    if mask is not None:
      token = self.param('mask_token', nn.initializers.normal(0.02), (1, 1, self.width))
      x = jnp.where(mask[..., None] > 0.5, token, x)
    x = x + sincos_2d_table(self.width, gh, gw)[None]
    cls = self.param('cls_token', nn.initializers.normal(0.02), (1, 1, self.width))
    x = jnp.concatenate([x, jnp.broadcast_to(cls, (x.shape[0], 1, self.width))], axis=1)  # CLS last
    for i in range(self.depth):
      x = Block(self.num_heads, attention_impl='einsum', name=f'blocks_{i}')(x, deterministic)
    x = nn.LayerNorm(epsilon=1e-6, name='norm')(x)
    return {'tokens': x, 'cls': x[:, -1], 'patch_tokens': x[:, :-1], 'pooled': x[:, :-1].mean(axis=1)}


# ----------------------------------------------------------------------------------------------------------
# Toy methods, registered from this file


class TwoViews:
  """Host transform: two independent train augmentations of one stored image."""

  def __init__(self, base):
    self.base = base

  def __call__(self, record, rng):
    a, b = self.base(record, rng), self.base(record, rng)
    return {'view1': a['image'], 'view2': b['image'], 'label': a['label']}


class Clip:
  """Host transform: a ``frames``-frame clip of one image drifting one pixel right per frame."""

  def __init__(self, base, frames: int):
    self.base, self.frames = base, frames

  def __call__(self, record, rng):
    out = self.base(record, rng)
    clip = np.stack([np.roll(out['image'], t, axis=1) for t in range(self.frames)])
    return {'video': clip, 'label': out['label']}


class _ViTToy(methods.Method):
  """Shared parts: a ViT encoder from the config and a linear head from patch tokens to patch pixels."""

  def __init__(self, config, facts):
    super().__init__(config, facts)
    self.encoder = build_encoder(config.model.encoder, attention_impl='einsum')
    self.patch = config.model.encoder.patch_size
    self.head = nn.Dense(self.patch ** 2 * self.image_shape[-1])

  def encoder_module(self):
    return self.encoder

  def _init(self, rng, images):
    enc_rng, head_rng = jax.random.split(rng)
    enc = self.encoder.init(enc_rng, images)['params']
    width = self.encoder.width
    head = self.head.init(head_rng, jnp.zeros((1, 1, width)))['params']
    return {'encoder': enc, 'head': head}


@methods.register('toy_two_view')
class TwoViewToy(_ViTToy):
  """Predicts the second view's patches from the first view's tokens."""

  def batch_fields(self, train=True):
    if not train:
      return super().batch_fields(False)  # probes read one image
    fields = super().batch_fields(True)
    return {'view1': fields['image'], 'view2': fields['image'], 'label': fields['label']}

  def record_transform(self, data_cfg, source, train):
    return TwoViews(pipeline.image_record_transform(data_cfg, source, True)) if train else None

  def init(self, rng, batch):
    return self._init(rng, batch['view1']), {}

  def loss_fn(self, params, extras, batch, rng, step):
    tokens = self.encoder.apply({'params': params['encoder']}, batch['view1'])['patch_tokens']
    pred = self.head.apply({'params': params['head']}, tokens)
    loss = jnp.mean(mse_per_token(pred, patchify(batch['view2'], self.patch)))
    return loss, ({'loss': loss}, extras)


@methods.register('toy_video')
class VideoToy(_ViTToy):
  """Predicts frame 1 of a clip from frame 0's tokens; features are the frames' features averaged over time."""

  FRAMES = 2

  def batch_fields(self, train=True):
    return {'video': Field((self.FRAMES, *self.image_shape), pixels=True), 'label': Field((), 'int32')}

  def record_transform(self, data_cfg, source, train):
    return Clip(pipeline.image_record_transform(data_cfg, source, train), self.FRAMES)

  def encoder_inputs(self, batch):
    return batch['video']

  def encode(self, params, batch):
    video = batch['video']
    b, t = video.shape[:2]
    out = self.encoder.apply({'params': params['encoder']}, video.reshape(b * t, *video.shape[2:]))
    per_frame = lambda x: x.reshape(b, t, *x.shape[1:])
    return {'cls': per_frame(out['cls']).mean(1), 'pooled': per_frame(out['pooled']).mean(1),
            'patch_tokens': per_frame(out['patch_tokens']).reshape(b, -1, out['patch_tokens'].shape[-1])}

  def init(self, rng, batch):
    return self._init(rng, batch['video'][:, 0]), {}

  def loss_fn(self, params, extras, batch, rng, step):
    video = batch['video']
    tokens = self.encoder.apply({'params': params['encoder']}, video[:, 0])['patch_tokens']
    pred = self.head.apply({'params': params['head']}, tokens)
    loss = jnp.mean(mse_per_token(pred, patchify(video[:, 1], self.patch)))
    return loss, ({'loss': loss}, extras)


@methods.register('toy_conv_mim')
class ConvToy(methods.Method):
  """Masked-pixel reconstruction with the ConvNet: 2x2 pixel cells zeroed at random, predicted from the map."""

  def __init__(self, config, facts):
    super().__init__(config, facts)
    self.encoder = build_encoder(config.model.encoder)
    self.head = nn.Dense(4 * self.image_shape[-1])  # each stride-2 position predicts its 2x2 cell

  def encoder_module(self):
    return self.encoder

  def init(self, rng, batch):
    enc_rng, head_rng = jax.random.split(rng)
    enc = self.encoder.init(enc_rng, batch['image'])['params']
    head = self.head.init(head_rng, jnp.zeros((1, self.encoder.width)))['params']
    return {'encoder': enc, 'head': head}, {}

  def loss_fn(self, params, extras, batch, rng, step):
    images = batch['image']
    cells = patchify(images, 2)  # [B, N, 4 C]
    mask = jax.random.bernoulli(rng, 0.5, cells.shape[:2]).astype(jnp.float32)
    h, w, c = self.image_shape
    masked = images * (1.0 - jnp.repeat(jnp.repeat(mask.reshape(-1, h // 2, w // 2, 1), 2, 1), 2, 2))
    fmap = self.encoder.apply({'params': params['encoder']}, masked)['feature_map']
    pred = self.head.apply({'params': params['head']}, fmap.reshape(fmap.shape[0], -1, fmap.shape[-1]))
    loss = masked_mean(mse_per_token(pred, cells), mask)
    return loss, ({'loss': loss}, extras)


@methods.register('toy_cls_last_mim')
class ClsLastToy(methods.Method):
  """SimMIM-style mask tokens in place with the CLS-last encoder, linear head, MSE on masked patches."""

  def __init__(self, config, facts):
    super().__init__(config, facts)
    self.encoder = build_encoder(config.model.encoder)
    self.patch = self.encoder.patch_size
    grid = masking.Grid(self.image_shape[0] // self.patch, self.image_shape[1] // self.patch)
    self.masker = masking.build('random', grid, ratio=0.5)
    self.head = nn.Dense(self.patch ** 2 * self.image_shape[-1])

  def encoder_module(self):
    return self.encoder

  def init(self, rng, batch):
    enc_rng, head_rng = jax.random.split(rng)
    mask = self.masker(jax.random.key(0), batch['image'].shape[0]).mask
    enc = self.encoder.init(enc_rng, batch['image'], mask)['params']
    head = self.head.init(head_rng, jnp.zeros((1, 1, self.encoder.width)))['params']
    return {'encoder': enc, 'head': head}, {}

  def loss_fn(self, params, extras, batch, rng, step):
    mask = self.masker(rng, batch['image'].shape[0]).mask
    tokens = self.encoder.apply({'params': params['encoder']}, batch['image'], mask)['patch_tokens']
    pred = self.head.apply({'params': params['head']}, tokens)
    loss = masked_mean(mse_per_token(pred, patchify(batch['image'], self.patch)), mask)
    return loss, ({'loss': loss}, extras)


@methods.register('toy_distill')
class DistillToy(_ViTToy):
  """A ViT student regressing a frozen teacher's patch tokens (from a pre-training workdir) from visible tokens."""

  external_extras = ('teacher',)

  def __init__(self, config, facts):
    super().__init__(config, facts)
    self.teacher = teachers.from_workdir(config.teacher.init)
    grid = masking.Grid(self.image_shape[0] // self.patch, self.image_shape[1] // self.patch)
    self.masker = masking.build('random', grid, ratio=0.5)
    self.head = nn.Dense(self.teacher.encoder.width)

  def init(self, rng, batch):
    params = self._init(rng, batch['image'])
    return params, {'teacher': self.teacher.init_params(rng)}  # shapes only: load_external fills them

  def load_external(self):
    return {'teacher': self.teacher.params}

  def loss_fn(self, params, extras, batch, rng, step):
    info = self.masker(rng, batch['image'].shape[0])
    student = self.encoder.apply({'params': params['encoder']}, batch['image'], ids_keep=info.ids_keep)
    pred = self.head.apply({'params': params['head']}, student['patch_tokens'])
    target = self.teacher.encode(extras['teacher'], batch)['patch_tokens']
    target = jnp.take_along_axis(target, info.ids_keep[..., None], axis=1)
    loss = jnp.mean(mse_per_token(pred, target))
    return loss, ({'loss': loss}, extras)


# ----------------------------------------------------------------------------------------------------------
# The harness: train, resume bitwise, probe through the method


def _config(method: str, encoder: dict, feature: str = 'cls'):
  c = load_config('configs/mae/digits.py', 'tiny')
  c.method = method
  c.model.encoder = encoder
  c.total_steps, c.warmup_steps, c.checkpoint.every_steps, c.log_every = STEPS, 1, 2, 2
  c.eval.feature = feature
  c.eval.random_init_baseline = False
  c.eval.figure = False
  return c


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _train_resume_probe(config, tmp_path):
  """Trains STEPS steps; trains again stopped at step 2 and resumed; asserts the resumed run is bitwise the
  uninterrupted one; runs the end-of-training probes through the method. Returns (result, summary)."""
  full = loop.train(config, str(tmp_path / 'full'))
  stopped = config.copy_and_resolve_references()
  stopped.stop_after_steps = 2
  assert int(loop.train(stopped, str(tmp_path / 'resumed')).state.step) == 2
  resumed = loop.train(config, str(tmp_path / 'resumed'))
  assert resumed.resumed_from == 2 and int(resumed.state.step) == STEPS
  for a, b in zip(_leaves(full.state.params), _leaves(resumed.state.params)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(_leaves(full.state.extras), _leaves(resumed.state.extras)):
    np.testing.assert_array_equal(a, b)
  assert all(np.isfinite(x).all() for x in _leaves(full.state.params))
  summary = pretrain_eval.evaluate_pretrained(config, str(tmp_path / 'full'), full.method, full.state.params,
                                              STEPS, full.mesh, full.rules)
  for key in ('linear_probe/top1', 'knn/top1', 'logreg/top1'):
    assert 0.0 <= summary[key] <= 1.0, key
  assert summary['knn/top1'] > 0.2  # ten classes: far above chance even after a few steps on digits
  return full, summary


VIT = dict(name='vit', patch_size=4, width=32, depth=1, num_heads=2, mlp_ratio=2.0)


def test_two_view_method(tmp_path):
  config = _config('toy_two_view', VIT)
  full, summary = _train_resume_probe(config, tmp_path)
  assert set(full.method.batch_fields(True)) == {'view1', 'view2', 'label'}
  assert 'raw_pixels/logreg/top1' in summary  # eval batches are single images


def test_video_shaped_method(tmp_path):
  config = _config('toy_video', VIT)
  full, summary = _train_resume_probe(config, tmp_path)
  report = (tmp_path / 'full' / 'compile_report.json').read_text()
  assert '"batch_bytes": 32832' in report  # 16 clips x 2 x 16 x 16 x 1 float32 + 16 int32 labels: the declared spec
  assert 'raw_pixels/logreg/top1' not in summary  # no single-image field to flatten


def test_method_on_a_convnet_registered_in_the_test(tmp_path):
  config = _config('toy_conv_mim', dict(name='toy_conv', width=16, depth=2), feature='pooled')
  full, summary = _train_resume_probe(config, tmp_path)
  batch = {'image': jnp.zeros((2, 16, 16, 1)), 'label': jnp.zeros((2,), jnp.int32)}
  out = full.method.encode(jax.device_get(full.state.params), batch)
  assert out['cls'] is None and out['feature_map'].shape == (2, 8, 8, 16)
  with pytest.raises(ValueError, match="no 'cls' feature"):
    full.method.feature(jax.device_get(full.state.params), batch, 'cls')
  assert full.method.num_layers == 3 and full.method.layer_id(['stage_1', 'kernel']) == 2


def test_method_whose_cls_token_is_last(tmp_path):
  config = _config('toy_cls_last_mim', dict(name='toy_cls_last', patch_size=4, width=32, depth=1, num_heads=2))
  full, _ = _train_resume_probe(config, tmp_path)
  params = jax.device_get(full.state.params)
  images = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
  tokens = full.method.encoder_module().apply({'params': params['encoder']}, images)['tokens']
  cls = full.method.feature(params, {'image': images}, 'cls')  # what every probe reads
  np.testing.assert_array_equal(cls, tokens[:, -1])
  assert not np.allclose(cls, tokens[:, 0])


@pytest.fixture(scope='module')
def teacher_workdir(tmp_path_factory):
  path = tmp_path_factory.mktemp('teacher')
  config = load_config('configs/mae/digits.py', 'tiny')
  config.model.encoder.width = 48  # not the student's width: the projection head maps between them
  loop.train(config, str(path))
  return str(path)


def _saved_extras_keys(checkpoint_dir: str, step: int) -> list[str]:
  manager = ocp.CheckpointManager(checkpoint_dir, options=ocp.CheckpointManagerOptions(create=False),
                                  item_handlers={'state': ocp.PyTreeCheckpointHandler()})
  try:
    saved = manager.item_metadata(step)['state']
    return sorted(getattr(saved, 'tree', saved)['extras'] or {})
  finally:
    manager.close()


def test_method_with_a_frozen_teacher_from_a_workdir(tmp_path, teacher_workdir):
  config = _config('toy_distill', VIT)
  config.teacher = dict(init=teacher_workdir)
  full, _ = _train_resume_probe(config, tmp_path)
  teacher_params, _ = workdir_lib.read_params(teacher_workdir)
  # Loaded into the state, unchanged by training (no gradient reaches extras), and absent from every checkpoint.
  for a, b in zip(_leaves(full.state.extras['teacher']), _leaves({'encoder': teacher_params['encoder']})):
    np.testing.assert_array_equal(a, b)
  for run in ('full', 'resumed'):
    directory = str(tmp_path / run / 'checkpoints')
    for step in _checkpoint_steps(directory):
      assert 'teacher' not in _saved_extras_keys(directory, step)
  # A teacher that does not fit what the method initialises is a clear error.
  method = full.method
  bad = jax.tree.map(lambda x: np.zeros((1,) + np.shape(x), np.float32), method.load_external()['teacher'])
  abstract = jax.eval_shape(method.init, jax.random.PRNGKey(0), method.example_batch(2))[1]
  with pytest.raises(ValueError, match="external 'teacher'"):
    state_lib.with_external(full.state, {'teacher': bad}, ('teacher',), nn.meta.unbox(abstract), None)


def _checkpoint_steps(directory: str) -> list[int]:
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
  try:
    return list(manager.all_steps())
  finally:
    manager.close()


def test_ema_moves_after_the_optimizer_step_without_lag():
  """HPM's EMA teacher after one train step is decay * old + (1 - decay) * the *updated* params."""
  config = load_config('configs/hpm/digits.py', 'tiny')
  config.hpm.total_steps = 10
  info = pipeline.dataset_info(config.data)
  job = loop.pretrain_job(config, '', info)
  method = job.objective
  state = nn.meta.unbox(jax.jit(state_lib.make_init_fn(method, job.tx, method.example_batch(2)))(
      jax.random.PRNGKey(0)))
  teacher_before = jax.device_get(state.extras['teacher'])
  batch = next(pipeline.train_iterator(config.data, 16, seed=0))
  new, _ = jax.jit(state_lib.make_train_step(method, job.tx, job.schedule))(state, batch, jax.random.PRNGKey(1))
  decay = float(method.ema_decay(0))
  expected = jax.tree.map(lambda t, p: decay * t + (1 - decay) * p, teacher_before, jax.device_get(new.params))
  for a, b in zip(_leaves(new.extras['teacher']), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_registries_refuse_duplicates_and_name_the_choices():
  with pytest.raises(ValueError, match='registered twice'):
    register_encoder('toy_conv')(type('Other', (), {}))
  with pytest.raises(ValueError, match='registered twice'):
    methods.register('toy_video')(type('Other', (), {}))
  with pytest.raises(ValueError, match=r"unknown method 'nope'.*'mae'.*'toy_video'"):
    methods.build(_config('nope', VIT), methods.Facts.for_images((16, 16, 1)))
  with pytest.raises(ValueError, match="unknown encoder 'nope'.*'toy_conv'.*'vit'"):
    build_encoder(dict(name='nope'))
  assert {'mae', 'simmim', 'hpm'} <= set(methods.method_names())  # found by discovery, no list to edit
