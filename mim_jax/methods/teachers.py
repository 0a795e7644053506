"""Frozen teachers: a pre-trained method read from its workdir, for methods whose targets are another model's
features (MaskAlign, MR-MAE, DMAE, CAE's ...).

A student method that uses one declares it as external state, so that it is loaded after every init and every
restore and never written into the student's checkpoints::

  class Distill(Method):
    external_extras = ('teacher',)

    def __init__(self, config, facts):
      super().__init__(config, facts)
      self.teacher = teachers.from_workdir(config.teacher.init)

    def init(self, rng, batch):
      ...
      return params, {'teacher': self.teacher.init_params(rng)}   # shapes only; replaced by load_external

    def load_external(self):
      return {'teacher': self.teacher.params}

    def loss_fn(self, params, extras, batch, rng, step):
      target = self.teacher.encode(extras['teacher'], batch)['patch_tokens']   # no gradient reaches it
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

from mim_jax import workdir as workdir_lib
from mim_jax.methods.base import Facts, Method, build, eval_params_from_workdir


@dataclasses.dataclass
class Teacher:
  """A frozen pre-trained encoder and its params (host arrays)."""

  encoder: Any  # the encoder module (the feature contract of mim_jax.models.encoders)
  params: Any  # {'encoder': ...}: only the encoder is kept (decoders and heads are not needed for targets)
  image_shape: tuple[int, int, int]  # what the teacher was built for (H, W, C)
  step: int | None  # the workdir checkpoint's step
  source: str
  method: Method | None = None  # the method that trained it (workdir teachers)
  supervised: bool = False  # fine-tuned with the dataset's labels (a "semantic" teacher: its students see labels)

  def init_params(self, rng: jax.Array) -> Any:
    """Params of the teacher's shapes (what a student's ``init`` puts under its external key)."""
    images = jax.numpy.zeros((2, *self.image_shape), jax.numpy.float32)
    return {'encoder': self.encoder.init(rng, images)['params']}

  def encode(self, params, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The teacher's feature dict, under ``stop_gradient``."""
    return jax.lax.stop_gradient(self.encoder.apply({'params': params['encoder']}, batch['image']))


FINETUNE_CONFIG = 'finetune_config.json'  # what a fine-tuning run (configs/eval/finetune_*.py) writes


def load(path: str, step: int | None = None) -> Teacher:
  """A teacher from a pre-training workdir, a fine-tuning workdir (a classifier trained with labels: the
  "semantic" teacher) or a mim_jax ``.safetensors`` checkpoint (``python -m mim_jax.convert --to mim_jax`` writes
  one from timm, Hugging Face or official-MAE weights)."""
  if os.path.isfile(path):
    return from_file(path)
  if not os.path.isdir(path):
    raise ValueError(f'teacher {path!r} is neither a workdir (pre-training or fine-tuning) nor a mim_jax '
                     '.safetensors checkpoint (convert other weights with python -m mim_jax.convert --to mim_jax).')
  if os.path.isfile(os.path.join(path, FINETUNE_CONFIG)):
    return from_finetune_workdir(path, step)
  return from_workdir(path, step)


def from_file(path: str) -> Teacher:
  """The encoder of a mim_jax ``.safetensors`` checkpoint, built from the model description it carries. A file
  whose params include a classifier head was fine-tuned with labels (a supervised teacher)."""
  from mim_jax.weights import file as weight_file

  ckpt = weight_file.load(path)
  spec = ckpt.spec
  if ckpt.batch_stats:
    raise ValueError(f'teacher {path!r} is a {spec.encoder!r} encoder with BatchNorm statistics; teachers with '
                     'BatchNorm are not supported yet (use a ViT or ConvNeXt teacher).')
  return Teacher(spec.build_encoder(), {'encoder': ckpt.params['encoder']}, (*spec.image_size, spec.channels), None,
                 path, None, supervised='head' in ckpt.params)


def from_finetune_workdir(path: str, step: int | None = None) -> Teacher:
  """The fine-tuned encoder of a fine-tuning workdir (``finetune_checkpoints``; its architecture is the fine-tune
  encoder of the pre-training workdir it started from, ``init``). Its features were trained with the dataset's
  labels: a student distilled from it has seen them too (say so next to every number it produces)."""
  import json

  with open(os.path.join(path, FINETUNE_CONFIG)) as f:
    finetune = workdir_lib.json_tuples(json.load(f))
  init = finetune.get('init')
  if not init or not os.path.isdir(init):
    raise ValueError(f'the fine-tuning workdir {path} started from init={init!r}, which is not a directory here; '
                     'the teacher needs it for the architecture (run from the directory the fine-tune ran in).')
  pre = from_workdir(init)
  encoder = pre.method.finetune_encoder(drop_path=0.0, pooled=bool(finetune.get('global_pool', True)),
                                        dtype=jax.numpy.float32, remat=False)
  params, step = workdir_lib.read_params(path, step, directory=os.path.join(path, 'finetune_checkpoints'))
  return Teacher(encoder, {'encoder': params['encoder']}, pre.image_shape, int(step), path, pre.method,
                 supervised=True)


def from_workdir(path: str, step: int | None = None) -> Teacher:
  """The teacher a pre-training workdir holds (its latest checkpoint unless ``step``), built from its own
  config.json; the student's dataset must give the same image shape."""
  from mim_jax.data import pipeline

  config = workdir_lib.read_config(path)
  method = build(config, Facts(pipeline.dataset_info(config.data)))
  params, step = eval_params_from_workdir(method, path, step, directory=workdir_lib.checkpoint_dir(config, path))
  if 'batch_stats' in method.encoder_variables(params):
    raise ValueError(f'teacher {path!r} is a {method.name} run whose encoder has BatchNorm statistics; teachers '
                     'with BatchNorm are not supported yet.')
  return Teacher(method.encoder_module(), {'encoder': method.encoder_params(params)}, tuple(method.image_shape),
                 int(step), path, method)


# -- a frozen ViT teacher as student methods configure it (DMAE, MR-MAE, ...) --

TEACHER_FIELDS = dict(
    teacher='',  # a pre-training workdir; '' = a random-init teacher_model (plumbing tests)
    teacher_step=-1,  # the workdir's checkpoint to read; -1 = the latest
    teacher_random=False,  # keep the teacher's architecture but not its weights (the control)
    teacher_model={},  # with teacher='': encoder fields over the student's (a random-init teacher)
    teacher_seed=0,  # the random-init teacher's weights
)


class ViTTeacher:
  """A frozen ViT teacher from a method's config fields (``TEACHER_FIELDS``): a pre-training workdir, the same
  architecture with random weights (``teacher_random``, the control), or a random-init ``teacher_model`` (plumbing
  tests only). It must read the student's tokens: a ViT on the student's image shape and patch size."""

  def __init__(self, fields, student_encoder: dict, image_shape: tuple[int, int, int], patch_size: int, what: str):
    from mim_jax.models.encoders import build_encoder
    from mim_jax.models.vit import ViTEncoder
    from mim_jax.utils.logging import log

    self.image_shape = tuple(image_shape)
    self.random = bool(fields.teacher_random) or not fields.teacher
    self.seed = int(fields.teacher_seed)
    self.source = None
    if fields.teacher:
      step = None if fields.teacher_step < 0 else int(fields.teacher_step)
      self.source = load(fields.teacher, step)
      encoder = self.source.encoder
      if not isinstance(encoder, ViTEncoder) or tuple(self.source.image_shape) != self.image_shape:
        raise ValueError(f'the {what} teacher {fields.teacher} must be a ViT on {self.image_shape} images (it reads '
                         f"the student's tokens); it is a {type(encoder).__name__} on {self.source.image_shape}.")
      at = f'step {self.source.step}, ' if self.source.step is not None else ''
      log(f'{what}: teacher {fields.teacher} ({at}{encoder.depth} blocks, width {encoder.width})'
          + (' with random weights (teacher_random)' if fields.teacher_random else '')
          + (': fine-tuned with labels, so this run\'s features carry label information'
             if self.source.supervised and not fields.teacher_random else ''))
    elif not fields.teacher_model:
      raise ValueError(f'config.{what}.teacher is empty: set it to a pre-trained workdir (e.g. '
                       f'--config.{what}.teacher=workdirs/fashion_mae), or set config.{what}.teacher_model for a '
                       'random-init teacher (plumbing tests only).')
    else:
      encoder = build_encoder({**dict(student_encoder), **dict(fields.teacher_model)}, dtype=jax.numpy.float32)
      if not isinstance(encoder, ViTEncoder):
        raise ValueError(f'the {what} teacher must be a ViT; config.{what}.teacher_model builds a '
                         f'{type(encoder).__name__}.')
    if encoder.patch_size != patch_size:
      raise ValueError(f'the {what} teacher has {encoder.patch_size}-pixel patches, the student {patch_size}: they '
                       'must see the same tokens.')
    self.encoder = encoder.clone(use_mask_token=False, drop_path=0.0, remat=False, dtype=jax.numpy.float32)

  def module(self, depth: int | None = None, final_norm: bool = True):
    """The teacher as it runs: truncated to its first ``depth`` blocks, with or without the final norm."""
    # A fine-tuned encoder with global pooling has no final norm (its classifier's fc_norm replaced it).
    return self.encoder.clone(depth=self.encoder.depth if depth is None else depth,
                              final_norm=final_norm and self.encoder.final_norm)

  def random_params(self, module):
    images = jax.numpy.zeros((1, *self.image_shape), jax.numpy.float32)
    return module.init(jax.random.key(self.seed), images)['params']

  def params(self, module) -> Any:
    """Host params for ``module`` (from :meth:`module`): the loaded weights, pruned to what it runs, or the seeded
    random ones (the same every time: the teacher is rebuilt after every restore, never checkpointed)."""
    import flax.linen as nn

    if self.random:
      return jax.device_get(nn.meta.unbox(self.random_params(module)))
    encoder = self.source.params['encoder']
    drop = {'mask_token', *(() if module.final_norm else ('norm',)),
            *(('pos_embed',) if module.pos_embed != 'learned' else ())}
    return {k: v for k, v in encoder.items()
            if k not in drop and not (k.startswith('blocks_') and int(k.split('_')[1]) >= module.depth)}
