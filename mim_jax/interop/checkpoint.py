"""Pre-training workdirs as a checkpoint source, and the mim_jax checkpoint file (:mod:`mim_jax.weights.file`)
for the converters.

A workdir's params come with the spec of its encoder (and MAE decoder) from its config.json; anything else the
method trained is named in the notes and not exported.
"""

from __future__ import annotations

import os

import numpy as np

from mim_jax.weights.file import load as load_file
from mim_jax.weights.spec import Checkpoint, DecoderSpec, ModelSpec


def load(path: str) -> Checkpoint:
  """A mim_jax ``.safetensors`` file, or a pre-training workdir (its latest checkpoint)."""
  if os.path.isdir(path):
    return from_workdir(path)
  return load_file(path)


def is_workdir(path: str) -> bool:
  from mim_jax import workdir as workdir_lib

  return workdir_lib.is_workdir(path)


def from_workdir(workdir: str, step: int | None = None) -> Checkpoint:
  """The params of a mim_jax pre-training run (its orbax checkpoint) with the spec from its config.json."""
  import jax

  from mim_jax import methods
  from mim_jax import workdir as workdir_lib
  from mim_jax.data import pipeline
  from mim_jax.models.decoders import MAEDecoder
  from mim_jax.models.vit import ViTEncoder

  if not is_workdir(workdir):
    raise FileNotFoundError(f'{workdir!r} is not a mim_jax workdir (needs config.json and checkpoints/).')
  config = workdir_lib.read_config(workdir)
  info = pipeline.dataset_info(config.data)
  method = methods.build(config, methods.Facts(info))
  params, step = workdir_lib.read_params(workdir, step, directory=workdir_lib.checkpoint_dir(config, workdir))
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  enc_module = method.encoder_module()
  if not isinstance(enc_module, ViTEncoder):
    raise ValueError(f'{workdir}: only ViT encoders export to checkpoint files; this run uses '
                     f'{type(enc_module).__name__}.')
  defaults = {'layer_scale': 0.0, 'class_token': 'first', 'rope': 'none', 'norm': 'layernorm', 'mlp': 'gelu',
              'qkv_bias': 'qkv', 'causal_mask': 'none'}
  options = {k: getattr(enc_module, k) for k, v in defaults.items() if getattr(enc_module, k) != v}
  if enc_module.pos_embed not in ('sincos', 'learned'):
    options['pos_embed'] = enc_module.pos_embed
  if options:
    raise ValueError(f'{workdir}: its ViT has block options the checkpoint files do not describe yet ({options}); '
                     'read the workdir directly (python -m mim_jax.main --mode=eval, or as a teacher).')
  h, w, c = info.image_shape
  decoder = getattr(method, 'decoder', None)
  tree = {'encoder': method.encoder_params(params)}
  decoder_spec = None
  if isinstance(decoder, MAEDecoder) and 'decoder' in params:
    decoder_spec = DecoderSpec(width=decoder.width, depth=decoder.depth, num_heads=decoder.num_heads,
                               mlp_ratio=decoder.mlp_ratio)
    tree['decoder'] = params['decoder']
  notes = [f'{workdir}: {method.name} checkpoint at step {step}.']
  dropped = sorted(set(params) - set(tree) - {'encoder'})
  if dropped:
    notes.append(f'method parts other than the encoder / MAE decoder are not exported: {dropped}.')
  spec = ModelSpec(patch_size=enc_module.patch_size, width=enc_module.width, depth=enc_module.depth,
                   num_heads=enc_module.num_heads, image_size=(h, w), channels=c, mlp_ratio=enc_module.mlp_ratio,
                   pos_embed=enc_module.pos_embed, final_norm=enc_module.final_norm, decoder=decoder_spec,
                   norm_pix_loss=bool(config.get('norm_pix_loss', True)) if config.method == 'mae' else None,
                   pixel_mean=tuple(float(v) for v in info.mean), pixel_std=tuple(float(v) for v in info.std))
  if enc_module.use_mask_token:
    tree['encoder'] = {k: v for k, v in tree['encoder'].items() if k != 'mask_token'}
    notes.append("the encoder's mask token (SimMIM-style) is not part of the exported feature extractor.")
  return Checkpoint(tree, spec, notes).check()
