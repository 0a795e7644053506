"""Load any supported checkpoint, optionally adapt it, and save it in another format.

  ckpt = load('mae_pretrain_vit_base.pth', 'mae_official')
  ckpt = resize(ckpt, (384, 384))                 # fine-tuning resolution
  save(ckpt, 'vit_b_mae.safetensors', 'timm')

Formats: ``mim_jax`` (a .safetensors file holding any registered encoder, or a pre-training / fine-tuning workdir
as a source), ``timm`` (a timm ``VisionTransformer``, ``ResNet`` or ``ConvNeXt`` state dict: .safetensors or .pth),
``hf_vitmae`` (a Hugging Face directory), ``mae_official`` (the ``facebookresearch/mae`` names; ``.pth`` files are
wrapped as ``{'model': state_dict}`` like the released ones) and ``illama_official`` (techmonsterwang/iLLaMA's
names). ViTs with block options other than iLLaMA's exist only as mim_jax files.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mim_jax.interop import checkpoint as mim_ckpt
from mim_jax.weights import file as weight_file
from mim_jax.interop import hf_vitmae, official_illama, official_mae, timm_convnets, timm_vit
from mim_jax.interop.pos_embed import resize_pos_embed, sincos_with_cls
from mim_jax.weights.spec import Checkpoint
from mim_jax.weights.tensors import read_tensors, write_tensors

SOURCES = ('mim_jax', 'timm', 'hf_vitmae', 'mae_official', 'illama_official')
TARGETS = ('mim_jax', 'timm', 'hf_vitmae', 'mae_official', 'illama_official')


def _check_format(fmt: str, allowed: tuple[str, ...], role: str) -> None:
  if fmt not in allowed:
    raise ValueError(f'unknown {role} format {fmt!r}; choose one of {allowed}.')


def load(src: str, fmt: str, *, num_heads: int | None = None, decoder_num_heads: int | None = None,
         source_image_size: tuple[int, int] | None = None, pos_embed: str = 'auto',
         step: int | None = None) -> Checkpoint:
  """Reads ``src`` in format ``fmt`` into a :class:`Checkpoint` (weights checked against the model's shapes).

  ``num_heads`` / ``decoder_num_heads``: the weights do not record head counts; timm and official files default to
  the standard ViT with that width (HF directories have them in config.json). ``source_image_size``: the training
  resolution when the position table's grid is not square. ``pos_embed``: 'auto', 'sincos' or 'learned'
  (see :func:`mim_jax.interop.timm_vit.encoder_from_timm`). ``step``: a workdir's checkpoint step (default latest).
  """
  _check_format(fmt, SOURCES, 'source')
  if fmt == 'mim_jax':
    return mim_ckpt.load(src, step)
  if fmt == 'hf_vitmae':
    return hf_vitmae.read_hf(src, pos_embed=pos_embed, num_heads=num_heads,
                             decoder_num_heads=decoder_num_heads).check()
  state, metadata = read_tensors(src)
  if metadata.get('format') == weight_file.FORMAT:
    raise ValueError(f'{src!r} is a mim_jax checkpoint; read it with format mim_jax (--from mim_jax).')
  if fmt == 'illama_official':
    return official_illama.checkpoint_from_official(state, num_heads=num_heads).check()
  if fmt == 'timm' and timm_convnets.is_timm_convnet(state):
    return timm_convnets.checkpoint_from_timm(state, image_size=source_image_size).check()
  if fmt == 'timm':
    decoder_keys = [k for k in state if k.startswith('decoder_') or k == 'mask_token']
    if decoder_keys:
      raise ValueError(f'{src!r} has MAE decoder keys ({decoder_keys[0]!r}): read it as mae_official.')
    ckpt = timm_vit.encoder_from_timm(state, num_heads=num_heads, image_size=source_image_size,
                                      pos_embed=pos_embed)
  else:
    ckpt = official_mae.checkpoint_from_official(state, num_heads=num_heads, decoder_num_heads=decoder_num_heads,
                                                 image_size=source_image_size, pos_embed=pos_embed)
  return ckpt.check()


def save(ckpt: Checkpoint, dst: str, fmt: str, *, hf_mask_ratio: float | None = None,
         hf_key_style: str = 'hub') -> list[str]:
  """Writes ``ckpt`` to ``dst`` in format ``fmt``; returns the files written."""
  _check_format(fmt, TARGETS, 'target')
  ckpt.check()
  if fmt == 'mim_jax':
    return [weight_file.save(ckpt, dst)]
  if fmt == 'illama_official':
    return [write_tensors(dst, official_illama.checkpoint_to_official(ckpt))]
  if fmt == 'timm' and ckpt.spec.encoder in ('resnet', 'convnext'):
    return [write_tensors(dst, timm_convnets.checkpoint_to_timm(ckpt))]
  ckpt.spec.require_plain_vit(f'the {fmt} format')
  if fmt == 'hf_vitmae':
    return hf_vitmae.write_hf(ckpt, dst, mask_ratio=hf_mask_ratio, key_style=hf_key_style)
  if fmt == 'timm':
    if ckpt.spec.decoder is not None:
      ckpt.notes.append('timm ViTs have no MAE decoder: it is not written (use mae_official or hf_vitmae to keep it).')
    timm_vit.timm_model_kwargs(ckpt.spec)  # refuses layouts timm cannot build
    return [write_tensors(dst, timm_vit.encoder_to_timm(ckpt))]
  return [write_tensors(dst, official_mae.checkpoint_to_official(ckpt), torch_wrapper='model')]


def materialize_pos_embed(ckpt: Checkpoint) -> Checkpoint:
  """A sin-cos model as the same model with a learned table holding those values (e.g. to fine-tune positions)."""
  if not ckpt.spec.is_vit:
    raise ValueError(f'a {ckpt.spec.encoder!r} encoder has no position table.')
  if ckpt.spec.pos_embed == 'learned':
    return ckpt
  ckpt.spec.require_plain_vit('a sin-cos table materialized as a learned one')
  params = dict(ckpt.params)
  params['encoder'] = {**params['encoder'], 'pos_embed': sincos_with_cls(ckpt.spec.width, ckpt.spec.grid)}
  return Checkpoint(params, dataclasses.replace(ckpt.spec, pos_embed='learned'), list(ckpt.notes))


def resize(ckpt: Checkpoint, image_size: tuple[int, int]) -> Checkpoint:
  """The checkpoint for another input resolution (same patch size).

  Sin-cos models need no weight change: the table is computed for the new grid. A learned table is resampled
  bicubically with its CLS row kept (:func:`mim_jax.interop.pos_embed.resize_pos_embed`).
  """
  image_size = (int(image_size[0]), int(image_size[1]))
  spec = dataclasses.replace(ckpt.spec, image_size=image_size)
  if not spec.is_vit:  # a ConvNet takes any size: only the recorded resolution changes
    return Checkpoint(ckpt.params, spec, list(ckpt.notes))  # validates divisibility by the patch size
  params = ckpt.params
  notes = list(ckpt.notes)
  if ckpt.spec.pos_embed == 'learned' and spec.grid != ckpt.spec.grid:
    table = np.asarray(params['encoder']['pos_embed'])
    cls_last = spec.options.get('class_token') == 'last'  # iLLaMA keeps the CLS row last, as its token
    if cls_last:
      table = np.roll(table, 1, axis=1)
    table = resize_pos_embed(table, ckpt.spec.grid, spec.grid)
    if cls_last:
      table = np.roll(table, -1, axis=1)
    params = {**params, 'encoder': {**params['encoder'], 'pos_embed': table}}
    notes.append(f'position table resized bicubically from {ckpt.spec.grid} to {spec.grid} (CLS row kept).')
  return Checkpoint(params, spec, notes)


def convert(src: str, dst: str, from_format: str, to_format: str, *, encoder_only: bool = False,
            image_size: tuple[int, int] | None = None, learned_pos_embed: bool = False,
            hf_mask_ratio: float | None = None, **load_kwargs) -> tuple[Checkpoint, list[str]]:
  """``load`` -> (drop the decoder) -> (learned table) -> (resize) -> ``save``; returns the checkpoint and files."""
  _check_format(to_format, TARGETS, 'target')
  ckpt = load(src, from_format, **load_kwargs)
  if encoder_only:
    ckpt = ckpt.encoder_only()
  if learned_pos_embed:
    ckpt = materialize_pos_embed(ckpt)
  if image_size is not None:
    ckpt = resize(ckpt, image_size)
  return ckpt, save(ckpt, dst, to_format, hf_mask_ratio=hf_mask_ratio)
