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
from typing import Any

import jax

from mim_jax import workdir as workdir_lib
from mim_jax.methods.base import Facts, Method, build


@dataclasses.dataclass
class Teacher:
  """A frozen pre-trained encoder: the method that trained it and its encoder params (host arrays)."""

  method: Method
  params: Any  # {'encoder': ...}: only the encoder is kept (decoders and heads are not needed for targets)
  step: int
  source: str

  def init_params(self, rng: jax.Array) -> Any:
    """Params of the teacher's shapes (what a student's ``init`` puts under its external key)."""
    params, _ = self.method.init(rng, self.method.example_batch(2))
    return {'encoder': self.method.encoder_params(params)}

  def encode(self, params, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The teacher's feature dict, under ``stop_gradient``."""
    return jax.lax.stop_gradient(self.method.encode(params, batch))


def from_workdir(path: str, step: int | None = None) -> Teacher:
  """The teacher a pre-training workdir holds (its latest checkpoint unless ``step``), built from its own
  config.json; the student's dataset must give the same image shape."""
  from mim_jax.data import pipeline

  config = workdir_lib.read_config(path)
  method = build(config, Facts(pipeline.dataset_info(config.data)))
  params, step = workdir_lib.read_params(path, step, directory=workdir_lib.checkpoint_dir(config, path))
  return Teacher(method, {'encoder': method.encoder_params(params)}, int(step), path)
