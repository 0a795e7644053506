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
from mim_jax.methods.base import Facts, Method, build


@dataclasses.dataclass
class Teacher:
  """A frozen pre-trained encoder and its params (host arrays), from a workdir or a converted checkpoint file."""

  encoder: Any  # the encoder module (the feature contract of mim_jax.models.encoders)
  params: Any  # {'encoder': ...}: only the encoder is kept (decoders and heads are not needed for targets)
  image_shape: tuple[int, int, int]  # what the teacher was built for (H, W, C)
  step: int | None  # the workdir checkpoint's step; None for a checkpoint file
  source: str
  method: Method | None = None  # the method that trained it (workdir teachers)

  def init_params(self, rng: jax.Array) -> Any:
    """Params of the teacher's shapes (what a student's ``init`` puts under its external key)."""
    images = jax.numpy.zeros((2, *self.image_shape), jax.numpy.float32)
    return {'encoder': self.encoder.init(rng, images)['params']}

  def encode(self, params, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The teacher's feature dict, under ``stop_gradient``."""
    return jax.lax.stop_gradient(self.encoder.apply({'params': params['encoder']}, batch['image']))


def load(path: str, step: int | None = None) -> Teacher:
  """A teacher from a pre-training workdir (a directory) or a mim_jax checkpoint file (``mim_jax.convert`` writes one
  from timm, Hugging Face or official-MAE weights)."""
  if os.path.isdir(path):
    return from_workdir(path, step)
  if os.path.isfile(path):
    if step is not None:
      raise ValueError(f'{path} is a checkpoint file: it has no steps to choose from (drop the step).')
    return from_checkpoint(path)
  raise ValueError(f'teacher {path!r} is neither a pre-training workdir nor a checkpoint file; convert outside '
                   'weights with python -m mim_jax.convert --to mim_jax.')


def from_workdir(path: str, step: int | None = None) -> Teacher:
  """The teacher a pre-training workdir holds (its latest checkpoint unless ``step``), built from its own
  config.json; the student's dataset must give the same image shape."""
  from mim_jax.data import pipeline

  config = workdir_lib.read_config(path)
  method = build(config, Facts(pipeline.dataset_info(config.data)))
  params, step = workdir_lib.read_params(path, step, directory=workdir_lib.checkpoint_dir(config, path))
  return Teacher(method.encoder_module(), {'encoder': method.encoder_params(params)}, tuple(method.image_shape),
                 int(step), path, method)


def from_checkpoint(path: str) -> Teacher:
  """The encoder of a mim_jax checkpoint file (e.g. an official MAE ViT-L converted with ``mim_jax.convert``)."""
  from mim_jax import interop

  ckpt = interop.load(path, 'mim_jax')
  spec = ckpt.spec
  return Teacher(spec.encoder(), {'encoder': ckpt.params['encoder']}, (*spec.image_size, spec.channels), None, path)
