"""``mim_jax.features(checkpoint, images)``: frozen-encoder features of a checkpoint file or workdir for downstream
users, with no masking.

  feats = mim_jax.features('vit_b_mae.safetensors', images)        # images: NHWC float32, already normalized
  feats = mim_jax.features(workdir, uint8_images, normalize='checkpoint')
  feats['cls'] [B, D], feats['patch_tokens'] [B, N, D] (raster order), feats['pooled'] [B, D]
  feats = mim_jax.features('videomae.safetensors', clips)         # a video ViT: clips [B, T, H, W, C]

Any encoder a mim_jax checkpoint describes works: ViTs with block options (iLLaMA, CAE, CroCo; 'cls' is the class
token wherever the encoder keeps it, absent without one) and ConvNets (ResNet / ConvNeXt: no 'cls'; 'patch_tokens'
is the last stage's map as [B, h*w, C], 'pooled' its spatial mean, BatchNorm in eval mode).

``pooled`` is the mean of the patch tokens, followed by the checkpoint's ``fc_norm`` when it has one (timm
``global_pool='avg'`` models, MAE fine-tuned checkpoints); that is timm's ``forward_head(pre_logits=True)`` for
those models, while for ``global_pool='token'`` models timm's pre-logits feature is ``cls``.

Heavy imports (jax, flax) happen on the first call, so ``import mim_jax`` stays light.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _normalization(normalize, spec) -> tuple[np.ndarray, np.ndarray]:
  if normalize == 'imagenet':
    mean, std = IMAGENET_MEAN, IMAGENET_STD
  elif normalize == 'checkpoint':
    if spec.pixel_mean is None or spec.pixel_std is None:
      raise ValueError("normalize='checkpoint' but this checkpoint records no pixel mean/std; pass "
                       "normalize='imagenet' or normalize=(mean, std) on the 0-1 pixel scale.")
    mean, std = spec.pixel_mean, spec.pixel_std
  elif isinstance(normalize, (tuple, list)) and len(normalize) == 2:
    mean, std = normalize
  else:
    raise ValueError(f"normalize must be 'imagenet', 'checkpoint' or (mean, std); got {normalize!r}.")
  return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def prepare_images(images, spec, normalize=None) -> np.ndarray:
  """NHWC float32 model inputs; uint8 images are scaled to 0-1 and normalized with ``normalize``."""
  images = np.asarray(images)
  h, w = spec.image_size
  if spec.num_frames:  # a video ViT: clips [B, T, H, W, C] of exactly the trained length and size
    if images.ndim == 4:
      images = images[None]
    if images.shape[1:] != spec.input_shape:
      raise ValueError(f'this checkpoint is a video model: clips must be [B, {", ".join(map(str, spec.input_shape))}]'
                       f' (frames, height, width, channels), got shape {images.shape}.')
  else:
    if images.ndim == 3:
      images = images[None]
    if images.ndim != 4 or images.shape[-1] != spec.channels:
      raise ValueError(f'images must be NHWC with {spec.channels} channel(s), got shape {images.shape} '
                       '(transpose NCHW arrays with x.transpose(0, 2, 3, 1)).')
  if spec.is_vit and spec.pos_embed == 'learned' and tuple(images.shape[1:3]) != (h, w):
    raise ValueError(f'this checkpoint has a learned position table for {h}x{w} images, got '
                     f'{images.shape[1]}x{images.shape[2]}: resize the checkpoint first '
                     '(python -m mim_jax.convert --image-size, or mim_jax.interop.resize).')
  if images.dtype == np.uint8:
    if normalize is None:
      known = (f' (this checkpoint records mean {spec.pixel_mean}, std {spec.pixel_std}: '
               "normalize='checkpoint')" if spec.pixel_mean is not None else '')
      raise ValueError('uint8 images need a normalization: pass normalize=\'imagenet\', \'checkpoint\' or '
                       f'(mean, std) on the 0-1 pixel scale{known}.')
    mean, std = _normalization(normalize, spec)
    return (images.astype(np.float32) / 255.0 - mean) / std
  if images.dtype.kind != 'f':
    raise ValueError(f'images must be float (already normalized) or uint8, got dtype {images.dtype}.')
  if normalize is not None:
    raise ValueError('float images are taken as already normalized; normalize= applies to uint8 images only.')
  return images.astype(np.float32)


def load_checkpoint(checkpoint, fmt: str | None = None):
  """A :class:`~mim_jax.weights.spec.Checkpoint` from an object, a mim_jax file / workdir, or ``fmt``'s file."""
  from mim_jax import interop

  if isinstance(checkpoint, interop.Checkpoint):
    return checkpoint
  return interop.load(str(checkpoint), fmt or 'mim_jax')


def feature_fn(ckpt) -> Any:
  """``images [B, H, W, C] -> dict(cls, patch_tokens, pooled)`` for ``ckpt`` (jitted, compiled once per spec)."""
  import jax
  import jax.numpy as jnp

  run = _compiled(ckpt.spec)
  variables = jax.tree.map(jnp.asarray, ckpt.encoder_variables())
  fc_norm = jax.tree.map(jnp.asarray, ckpt.params['fc_norm']) if ckpt.spec.fc_norm else None
  return lambda images: run(variables, fc_norm, images)


@functools.lru_cache(maxsize=8)
def _compiled(spec):
  import jax
  import jax.numpy as jnp

  from mim_jax.models.vit import layer_norm

  encoder = spec.build_encoder()
  # iLLaMA's soft causal mask at the rate the model was left at (its schedule ends causal, rate 0).
  rate = ({'soft_mask_rate': float(spec.soft_mask_rate or 0.0)}
          if spec.is_vit and spec.options.get('causal_mask') == 'soft' else {})

  @jax.jit
  def run(variables, fc_norm, images):
    out = encoder.apply(variables, images, **rate)  # the encoder's feature contract (BatchNorm: running stats)
    pooled = out['pooled']
    if fc_norm is not None:
      pooled = layer_norm(jnp.float32, 'fc_norm').apply({'params': fc_norm}, pooled)
    result = {'patch_tokens': out['patch_tokens'], 'pooled': pooled}
    if out.get('cls') is not None:  # ConvNets and CLS-less ViTs have none
      result['cls'] = out['cls']
    return result

  return run


def features(checkpoint, images, *, normalize=None, batch_size: int = 64, source_format: str | None = None,
             precision: str = 'highest') -> dict[str, np.ndarray]:
  """Encoder features with no masking: ``dict(cls [B, D], patch_tokens [B, N, D], pooled [B, D])`` (numpy; no
  ``cls`` for encoders without a class token, e.g. ConvNets).

  ``checkpoint``: a mim_jax ``.safetensors`` file, a pre-training or fine-tuning workdir, a loaded
  :class:`~mim_jax.weights.spec.Checkpoint`, or another format's file with ``source_format=`` ('timm' for timm
  ViT / ResNet / ConvNeXt files, 'hf_vitmae', 'mae_official', 'illama_official'). ``images``: NHWC float32
  already normalized the way the model was trained, or uint8 with
  ``normalize`` = 'imagenet' (mean 0.485/0.456/0.406, std 0.229/0.224/0.225), 'checkpoint' (the mean/std the
  checkpoint records, e.g. a workdir's dataset statistics) or ``(mean, std)`` on the 0-1 scale.
  ``precision``: the matmul precision ('highest' gives float32 results that match PyTorch's CPU outputs).
  """
  import jax

  ckpt = load_checkpoint(checkpoint, source_format)
  x = prepare_images(images, ckpt.spec, normalize)
  run = feature_fn(ckpt)
  outputs: list[dict] = []
  batch_size = max(1, min(int(batch_size), len(x)))
  with jax.default_matmul_precision(precision):
    for start in range(0, len(x), batch_size):
      chunk = x[start:start + batch_size]
      valid = len(chunk)
      if valid < batch_size:  # one compiled shape for every batch
        chunk = np.concatenate([chunk, np.zeros((batch_size - valid, *chunk.shape[1:]), chunk.dtype)])
      out = jax.device_get(run(chunk))
      outputs.append({k: np.asarray(v)[:valid] for k, v in out.items()})
  return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
