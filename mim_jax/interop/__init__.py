"""Weight interop: official MAE, timm, Hugging Face ViTMAE and mim_jax checkpoint files.

Library entry points (the CLI is ``python -m mim_jax.convert``)::

  from mim_jax import interop
  ckpt = interop.load('model.safetensors', 'timm', num_heads=12)
  interop.save(ckpt, 'out_dir', 'hf_vitmae')
"""

from mim_jax.interop.convert import SOURCES, TARGETS, convert, load, materialize_pos_embed, resize, save
from mim_jax.interop.official_mae import from_official, to_official
from mim_jax.weights.spec import Checkpoint, DecoderSpec, ModelSpec

__all__ = ['SOURCES', 'TARGETS', 'Checkpoint', 'DecoderSpec', 'ModelSpec', 'convert', 'from_official', 'load',
           'materialize_pos_embed', 'resize', 'save', 'to_official']
