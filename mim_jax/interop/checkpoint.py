"""Pre-training workdirs as a checkpoint source, and the mim_jax checkpoint file (:mod:`mim_jax.weights.file`)
for the converters.

A pre-training workdir's params come with the spec of its encoder (any registered encoder: ViTs with block
options, ConvNets with their BatchNorm statistics) and MAE decoder from its config.json; anything else the method
trained is named in the notes and not exported. A fine-tuning workdir gives its classifier (encoder, fc_norm, head)
with the spec the run wrote (``model_spec.json``).
"""

from __future__ import annotations

import os

import numpy as np

from mim_jax.weights.file import load as load_file
from mim_jax.weights.spec import Checkpoint, DecoderSpec, ModelSpec


from mim_jax.workdir import MODEL_SPEC_FILE as FINETUNE_SPEC  # a fine-tuning run's classifier's ModelSpec


def load(path: str, step: int | None = None) -> Checkpoint:
  """A mim_jax ``.safetensors`` file, or a pre-training / fine-tuning workdir (its latest checkpoint unless
  ``step``)."""
  if os.path.isdir(path):
    if is_finetune_workdir(path):
      return from_finetune_workdir(path, step)
    return from_workdir(path, step)
  if step is not None:
    raise ValueError(f'step={step} selects a workdir checkpoint; {path!r} is a file.')
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
  from mim_jax.methods.base import eval_params_from_workdir
  from mim_jax.models.decoders import MAEDecoder
  from mim_jax.models.vit import ViTEncoder

  if not is_workdir(workdir):
    raise FileNotFoundError(f'{workdir!r} is not a mim_jax workdir (a pre-training run has config.json and '
                            f'checkpoints/, a fine-tuning run {FINETUNE_SPEC} and finetune_checkpoints/).')
  config = workdir_lib.read_config(workdir)
  info = pipeline.dataset_info(config.data)
  method = methods.build(config, methods.Facts(info))
  params, step = eval_params_from_workdir(method, workdir, step, directory=workdir_lib.checkpoint_dir(config, workdir))
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  enc_module = method.encoder_module()
  decoder = getattr(method, 'decoder', None)
  variables = method.encoder_variables(params)
  tree = {'encoder': variables['params']}
  if variables.get('batch_stats'):
    tree['encoder_batch_stats'] = variables['batch_stats']
  decoder_spec = None
  if isinstance(decoder, MAEDecoder) and 'decoder' in params:
    decoder_spec = DecoderSpec(width=decoder.width, depth=decoder.depth, num_heads=decoder.num_heads,
                               mlp_ratio=decoder.mlp_ratio)
    tree['decoder'] = params['decoder']
  notes = [f'{workdir}: {method.name} checkpoint at step {step}.']
  dropped = sorted(set(params) - set(tree) - {'batch_stats'})
  if dropped:
    notes.append(f'method parts other than the encoder / MAE decoder are not exported: {dropped}.')
  fields = dict(pixel_mean=tuple(float(v) for v in info.mean), pixel_std=tuple(float(v) for v in info.std))
  if isinstance(enc_module, ViTEncoder):
    fields.update(decoder=decoder_spec,
                  norm_pix_loss=bool(config.get('norm_pix_loss', True)) if config.method == 'mae' else None)
  # A video method's encoder takes clips (its spec records the clip length); run settings (mask token) not recorded.
  spec = ModelSpec.for_encoder(enc_module, getattr(method, 'clip_shape', None) or info.image_shape, **fields)
  if getattr(enc_module, 'use_mask_token', False):
    tree['encoder'] = {k: v for k, v in tree['encoder'].items() if k != 'mask_token'}
    notes.append("the encoder's mask token (SimMIM-style) is not part of the exported feature extractor.")
  return Checkpoint(tree, spec, notes).check()


def is_finetune_workdir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, FINETUNE_SPEC))


def from_finetune_workdir(workdir: str, step: int | None = None) -> Checkpoint:
  """The fine-tuned classifier of a fine-tuning workdir (``finetune_checkpoints``): encoder, BatchNorm statistics,
  ``fc_norm`` and ``head``, with the model description the run wrote (``model_spec.json``)."""
  import jax

  from mim_jax import workdir as workdir_lib

  with open(os.path.join(workdir, FINETUNE_SPEC)) as f:
    spec = ModelSpec.from_json(f.read())
  directory = os.path.join(workdir, 'finetune_checkpoints')
  (params, extras), step = workdir_lib.read_state_parts(workdir, ('params', 'extras'), step, directory)
  tree = {k: params[k] for k in ('encoder', 'fc_norm', 'head') if k in params}
  stats = (extras or {}).get('batch_stats', {}).get('encoder')
  if stats:
    tree['encoder_batch_stats'] = stats
  tree = jax.tree.map(lambda x: np.asarray(x, np.float32), tree)
  notes = [f'{workdir}: fine-tuned classifier at step {step} (trained with labels).']
  return Checkpoint(tree, spec, notes).check()

