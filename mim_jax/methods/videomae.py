"""VideoMAE (Tong et al., NeurIPS 2022) and VideoMAE V2's dual masking (Wang et al., CVPR 2023): masked
autoencoding of clips.

* Tokens: tubelets of ``tubelet_size`` frames x ``p`` x ``p`` pixels (the ViT's ``tubelet_size``; a Conv3d
  embedding), time-major, with a fixed 1-D sinusoid table over the flat index (``pos_embed='sincos_1d'``); no CLS.
* Encoder mask: ``tube`` (:mod:`mim_jax.masking.video`), 90% of each frame's positions, the same in every frame; the
  encoder sees the visible tubelets only.
* Decoder (:class:`~mim_jax.models.decoders.VideoMAEDecoder`): the visible latents and a mask token for every tubelet
  to reconstruct. V1 (``videomae.decoder_mask='none'``) reconstructs every encoder-masked tubelet; V2
  (``'running_cell'``) only the running cell's kept half, which is the cost saving (and includes ~10% tubelets the
  encoder saw: the official decoder processes them twice).
* Target: each tubelet of the un-normalized clip (pixels back in [0, 1] with the data's mean / std), normalized per
  channel over its pixels (unbiased std, ``+ 1e-6`` on the std); per-token MSE over the features.
* Loss set (``videomae.loss_on``): 'masked' (the official code: the reconstructed tubelets the encoder did not
  see, summed over the batch and divided by their count) or 'decoded' (every reconstructed tubelet, the visible
  duplicates included).

Batch: ``video`` ``[T, H, W, C]`` (``T = data.num_frames``), ``label`` and ``direction``, made from image records by
:mod:`mim_jax.data.clips` (``data.clips``: synthetic moving sprites). Frozen features: the encoder on the whole
clip, mean-pooled. Official code: OpenGVLab/VideoMAEv2 ``models/modeling_pretrain.py``,
``dataset/masking_generator.py``, ``engine_for_pretraining.py``; parity fixtures in tests/fixtures/official_videomae/.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mim_jax import masking
from mim_jax.data import clips as clips_lib
from mim_jax.data.batch import Field
from mim_jax.masking.video import VideoGrid
from mim_jax.methods.base import Method, config_block, register, require_hidden_tokens
from mim_jax.models.decoders import VideoMAEDecoder
from mim_jax.models.vit import ViTEncoder
from mim_jax.targets import normalize_tubelets, patchify_video, unpatchify_video

DECODER_MASKS = ('none', 'running_cell')
LOSS_ON = ('masked', 'decoded')


def videomae_defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'decoder_mask': 'running_cell',  # V2's dual masking; 'none': VideoMAE V1 (decode every masked tubelet)
      'decoder_mask_ratio': 0.5,  # the running cell's share left out of the decoder
      'loss_on': 'masked',  # 'masked' (official) | 'decoded' (every reconstructed tubelet)
  })


class VideoMAEModel(nn.Module):
  encoder: ViTEncoder
  decoder: VideoMAEDecoder

  def __call__(self, clips: jax.Array, ids_keep: jax.Array, ids_decode: jax.Array) -> tuple[jax.Array, jax.Array]:
    latent = self.encoder(clips, ids_keep=ids_keep)['tokens']
    return latent, self.decoder(latent, ids_keep, ids_decode)


def check_clips(clips: jax.Array, clip_shape: tuple[int, ...]) -> None:
  if clips.ndim != 5 or tuple(clips.shape[1:]) != tuple(clip_shape):
    raise ValueError(f'expected clips of shape [batch, {", ".join(map(str, clip_shape))}] (frames, height, width, '
                     f'channels), got {tuple(clips.shape)}. Check data.num_frames and data.image_size.')


@register('videomae')
class VideoMAE(Method):
  class_tokens = ('none',)

  def __init__(self, config, facts):
    super().__init__(config, facts)
    self.cfg = config_block(config, 'videomae', videomae_defaults())
    for field, allowed in (('decoder_mask', DECODER_MASKS), ('loss_on', LOSS_ON)):
      if self.cfg[field] not in allowed:
        raise ValueError(f'config.videomae.{field} must be one of {allowed}, got {self.cfg[field]!r}.')
    self.encoder = self.vit_encoder('VideoMAE has no CLS token: model.encoder.class_token=none')
    self.encoder.check_options()
    if self.encoder.tubelet_size < 1:
      raise ValueError('videomae embeds tubelets: set model.encoder.tubelet_size (2 in VideoMAE) and '
                       "pos_embed='sincos_1d'.")
    h, w, c = self.image_shape
    frames = int(config.data.get('num_frames', 16))
    self.clip_shape = (frames, h, w, c)
    self.grid = VideoGrid(*self.encoder.token_grid(self.clip_shape))
    p, t = self.encoder.patch_size, self.encoder.tubelet_size
    m = config.model.decoder
    self.decoder = VideoMAEDecoder(width=m.width, depth=m.depth, num_heads=m.num_heads,
                                   mlp_ratio=m.get('mlp_ratio', 4.0), out_dim=t * p * p * c,
                                   num_tokens=self.grid.num_tokens, **self.module_settings())
    self.model = VideoMAEModel(self.encoder, self.decoder)
    self.masker = masking.build(config.mask.name, self.grid, **{k: v for k, v in config.mask.items() if k != 'name'})
    require_hidden_tokens(self.masker, self.name, config)
    self.decoder_masker = None
    if self.cfg.decoder_mask == 'running_cell':
      self.decoder_masker = masking.build('running_cell', self.grid, ratio=float(self.cfg.decoder_mask_ratio))

  def batch_fields(self, train: bool = True) -> dict[str, Field]:
    del train
    return clips_lib.clip_fields(self.clip_shape)

  def record_transform(self, data_cfg, source, train: bool):
    return clips_lib.clip_record_transform(data_cfg, source, train)

  def clips(self, batch) -> jax.Array:
    check_clips(batch['video'], self.clip_shape)
    return batch['video']

  def encoder_inputs(self, batch):
    return batch['video']

  # -- the objective --

  def draw_masks(self, rng, batch_size: int) -> tuple[masking.MaskInfo, jax.Array]:
    """The encoder's tube mask and the ids of the tubelets the decoder reconstructs (ascending, time-major)."""
    enc_rng, dec_rng = jax.random.split(rng)
    info = self.masker(enc_rng, batch_size)
    if self.decoder_masker is None:
      return info, info.ids_masked
    return info, self.decoder_masker(dec_rng, batch_size).ids_keep

  def target(self, clips: jax.Array) -> jax.Array:
    """``[B, N, t*p*p*C]``: the un-normalized clip's tubelets, each normalized per channel."""
    info = self.facts.data
    pixels = clips.astype(jnp.float32) * jnp.asarray(info.std, jnp.float32) + jnp.asarray(info.mean, jnp.float32)
    patches = patchify_video(pixels, self.encoder.tubelet_size, self.encoder.patch_size)
    return normalize_tubelets(patches, self.clip_shape[-1])

  def forward(self, params, clips: jax.Array, info: masking.MaskInfo, ids_decode: jax.Array) -> dict:
    """The predictions for ``ids_decode``, their targets, the loss mask over them and the loss."""
    check_clips(clips, self.clip_shape)
    latent, pred = self.model.apply({'params': params}, clips, info.ids_keep, ids_decode)
    target = jnp.take_along_axis(self.target(clips), ids_decode[:, :, None], axis=1)
    per_token = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
    if self.cfg.loss_on == 'masked':
      weight = jnp.take_along_axis(info.mask, ids_decode, axis=1)
    else:
      weight = jnp.ones_like(per_token)
    loss = jnp.sum(per_token * weight) / jnp.maximum(jnp.sum(weight), 1.0)
    return {'latent': latent, 'pred': pred, 'target': target, 'loss_weight': weight, 'loss_per_token': per_token,
            'loss': loss}

  def init(self, rng, batch):
    clips = self.clips(batch)
    info, ids_decode = self.draw_masks(jax.random.key(0), clips.shape[0])
    return self.model.init(rng, clips, info.ids_keep, ids_decode)['params'], {}

  def loss_fn(self, params, extras, batch, rng, step):
    clips = self.clips(batch)
    info, ids_decode = self.draw_masks(rng, clips.shape[0])
    loss = self.forward(params, clips, info, ids_decode)['loss']
    return loss, ({'loss': loss}, extras)

  def reconstruct_clip(self, params, clips: jax.Array, rng) -> dict[str, jax.Array]:
    """For figures: the encoder's visible tubelets (``visible`` [B, T, H, W, C], masked ones 0), the tubelets the
    decoder reconstructs (``decoded``, others 0) and the reconstruction (``rec``: the visible pixels, the
    predictions de-normalized with each tubelet's own per-channel statistics where the decoder reconstructs a
    masked tubelet, 0 where nothing is known), all in the un-normalized [0, 1] pixel scale; and the loss."""
    check_clips(clips, self.clip_shape)
    info, ids_decode = self.draw_masks(rng, clips.shape[0])
    out = self.forward(params, clips, info, ids_decode)
    t, p, c = self.encoder.tubelet_size, self.encoder.patch_size, self.clip_shape[-1]
    data = self.facts.data
    pixels = clips.astype(jnp.float32) * jnp.asarray(data.std, jnp.float32) + jnp.asarray(data.mean, jnp.float32)
    tubelets = patchify_video(pixels, t, p)  # [B, N, t*p*p*C]
    x = tubelets.reshape(*tubelets.shape[:2], -1, c)
    mean, std = x.mean(axis=-2, keepdims=True), jnp.sqrt(x.var(axis=-2, keepdims=True, ddof=1))
    pred = out['pred'].astype(jnp.float32).reshape(*out['pred'].shape[:2], -1, c)
    pred = pred * (jnp.take_along_axis(std, ids_decode[:, :, None, None], 1) + 1e-6) + \
        jnp.take_along_axis(mean, ids_decode[:, :, None, None], 1)
    b, n = info.mask.shape
    visible = 1.0 - info.mask  # [B, N]
    decoded = jnp.zeros((b, n)).at[jnp.arange(b)[:, None], ids_decode].set(1.0)
    filled = jnp.zeros_like(tubelets).at[jnp.arange(b)[:, None], ids_decode].set(pred.reshape(b, -1, t * p * p * c))
    rec = jnp.where(visible[..., None] > 0, tubelets, filled * (decoded * info.mask)[..., None])

    def clip(tokens):
      return unpatchify_video(tokens, t, p, self.clip_shape)

    return {'clip': pixels, 'visible': clip(tubelets * visible[..., None]),
            'decoded': clip(tubelets * decoded[..., None]), 'rec': clip(rec), 'loss': out['loss']}
