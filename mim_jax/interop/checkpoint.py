"""The mim_jax checkpoint file, and pre-training workdirs as a checkpoint source.

A mim_jax checkpoint is one ``.safetensors`` file:

* tensors: float32, named by their '/'-joined param path (``encoder/blocks_0/attn/qkv/kernel``, ``decoder/...``,
  ``fc_norm/scale``, ``head/kernel``), in mim_jax layouts (Dense kernels ``[in, out]``, patch kernel
  ``[p*p*C, D]``);
* metadata (safetensors' string map): ``format = "mim_jax"`` and ``mim_jax_model`` = the JSON of
  :class:`~mim_jax.interop.spec.ModelSpec` (patch size, width, depth, heads, mlp ratio, image size, channels,
  position table kind, norms, head, decoder dims, and pixel mean/std when known).

It needs neither torch nor orbax to read, and holds weights only (no optimizer state: resume training from the
workdir instead).
"""

from __future__ import annotations

import os

import numpy as np

from mim_jax.interop.spec import Checkpoint, DecoderSpec, ModelSpec, flatten, unflatten
from mim_jax.interop.tensors import read_tensors, write_tensors

FORMAT = 'mim_jax'
SPEC_KEY = 'mim_jax_model'


def save(ckpt: Checkpoint, path: str) -> str:
  if not path.endswith('.safetensors'):
    raise ValueError(f'a mim_jax checkpoint is a .safetensors file; got {path!r}.')
  ckpt.check()
  tensors = {k: np.asarray(v, np.float32) for k, v in flatten(ckpt.params).items()}
  return write_tensors(path, tensors, metadata={'format': FORMAT, SPEC_KEY: ckpt.spec.to_json()})


def load(path: str) -> Checkpoint:
  """A mim_jax ``.safetensors`` file, or a pre-training workdir (its latest checkpoint)."""
  if os.path.isdir(path):
    return from_workdir(path)
  tensors, metadata = read_tensors(path)
  if metadata.get('format') != FORMAT or SPEC_KEY not in metadata:
    raise ValueError(f'{path!r} is not a mim_jax checkpoint (its metadata has no mim_jax model description). '
                     'Convert it first: python -m mim_jax.convert --from {timm,hf_vitmae,mae_official} '
                     '--to mim_jax SRC DST.')
  return Checkpoint(unflatten(tensors), ModelSpec.from_json(metadata[SPEC_KEY])).check()


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
  if enc_module.layer_scale or enc_module.pos_embed not in ('sincos', 'learned'):
    raise ValueError(f'{workdir}: its ViT has block options the checkpoint files do not describe yet '
                     f'(layer_scale={enc_module.layer_scale}, pos_embed={enc_module.pos_embed!r}); read the '
                     'workdir directly (python -m mim_jax.main --mode=eval, or as a teacher).')
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
