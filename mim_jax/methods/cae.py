"""CAE (Chen et al., IJCV 2023, "Context Autoencoder for Self-Supervised Representation Learning").

The encoder sees only the visible patches; a *latent regressor* predicts the masked patches' representations from
the visible ones, the prediction is *aligned* with what the encoder itself makes of the masked patches, and a decoder
maps the predicted latents to the target. As in the authors' code (Atten4Vis/CAE ``models/modeling_cae.py``,
``models/modeling_cae_helper.py``, ``furnace/engine_for_pretraining.py``; read for semantics, nothing copied):

* ``z = encoder(CLS + visible patches)`` (after its final norm; a Linear + LayerNorm to the regressor's width when
  that differs).
* Latent regressor (:class:`mim_jax.models.decoders.LatentRegressor`): one learned mask token per masked position
  as the query; each block cross-attends from the queries to ``[visible latents (no CLS), queries]`` with CAE's
  fixed sin-cos positions (rows first) on queries and keys; LayerScale; final norm -> ``z_hat`` ``[B, M, D]``.
* Alignment target: ``stop_gradient(encoder(CLS + the masked patches as if visible))[:, 1:]`` with the *current*
  weights (their alignment encoder is a copy whose tensors are re-pointed at the encoder's after every forward),
  in training mode (drop path on), through the same projection when there is one.
* Decoder (:class:`mim_jax.models.decoders.CAEDecoder`): ``z_hat + positions`` -> blocks -> norm -> head.
* ``L = L_target + align_weight * mean((z_hat - target)^2)`` (weight 2).

The official target is the DALL-E tokenizer's code of each masked patch (8192-way cross-entropy), which cannot be had
offline. ``target='pixels'`` regresses the masked patches' (norm-)pixels instead, MAE's loss (our documented
deviation); ``target='teacher'`` regresses a frozen teacher's standardized last-layer features of the masked patches
(the teacher sees the whole image; configured as DMAE's, :class:`mim_jax.methods.teachers.ViTTeacher`).
``align_weight=0`` is the paper's key ablation (regressor + decoder without alignment).

The encoder of the recipe uses LayerScale 0.1 and CAE's sin-cos layout (``model.encoder.layer_scale``,
``pos_embed='sincos_rows_first'``); the q/v-only attention bias of their blocks is the full bias with its k part
at zero (a k bias shifts every logit of a query alike: the attention ignores it).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mim_jax import masking
from mim_jax.losses import mse_per_token
from mim_jax.methods import teachers
from mim_jax.methods.base import Method, check_images, config_block, register
from mim_jax.methods.mrmae import standardize
from mim_jax.models.decoders import CAEDecoder, LatentRegressor
from mim_jax.models.vit import EMBED, MLP, ViTEncoder, _param_init, dense, layer_norm, sincos_2d_table, token_dense
from mim_jax.models.vit import token_init
from mim_jax.targets import pixel_target, reconstruction_images

TARGETS = ('pixels', 'teacher')


def cae_defaults() -> ml_collections.ConfigDict:
  """``config.cae``: fields missing from a config take these values (the paper's ViT-B recipe, pixel target)."""
  return ml_collections.ConfigDict(dict(
      **teachers.TEACHER_FIELDS,
      regressor_depth=4,
      layer_scale=0.1,  # the regressor's and decoder's LayerScale start (the encoder's is model.encoder.layer_scale)
      align_weight=2.0,
      target='pixels',
  ))


class CAEModel(nn.Module):
  encoder: ViTEncoder
  regressor: LatentRegressor
  decoder: CAEDecoder
  width: int  # the regressor's and decoder's
  grid_hw: tuple[int, int]

  @nn.compact
  def __call__(self, images: jax.Array, info: masking.MaskInfo, deterministic: bool = True):
    ids_masked = info.ids_masked
    z = self.encoder(images, ids_keep=info.ids_keep, deterministic=deterministic)['tokens']
    # The alignment target: the same encoder (same weights, training mode) on the masked patches, no gradient.
    target = self.encoder(images, ids_keep=ids_masked, deterministic=deterministic)['tokens'][:, 1:]
    if self.width != self.encoder.width:  # their encoder_to_regresser (+ norm), on both
      project = dense(self.width, (EMBED, MLP), z.dtype, 'encoder_to_regressor')
      norm = layer_norm(z.dtype, 'encoder_to_regressor_norm')
      z, target = norm(token_dense(project, z)), norm(token_dense(project, target))
    target = jax.lax.stop_gradient(target)
    pos = jnp.asarray(sincos_2d_table(self.width, *self.grid_hw, rows_first=True)).astype(z.dtype)
    pos_visible, pos_masked = pos[info.ids_keep], pos[ids_masked]
    token = self.param('mask_token', _param_init(token_init, (None, None, EMBED)), (1, 1, self.width))
    queries = jnp.broadcast_to(token.astype(z.dtype), (z.shape[0], ids_masked.shape[1], self.width))
    predicted = self.regressor(queries, z[:, 1:], pos_masked, pos_visible, deterministic)
    return z, predicted, target, self.decoder(predicted, pos_masked, deterministic)


@register('cae')
class CAE(Method):

  def __init__(self, config, facts):
    super().__init__(config, facts)
    self.cae = c = config_block(config, 'cae', cae_defaults())
    if c.target not in TARGETS:
      raise ValueError(f"config.cae.target={c.target!r} is not one of {TARGETS} (the paper's DALL-E tokenizer "
                       'target cannot be had offline: docs/methods.md).')
    self.encoder = self.vit_encoder('the regressor reads the visible tokens with CLS first')
    h, w, ch = self.image_shape
    self.grid_hw = self.encoder.grid((h, w))
    self.masker = masking.build(config.mask.name, masking.Grid(*self.grid_hw),
                                **{k: v for k, v in config.mask.items() if k != 'name'})
    if self.masker.len_keep >= self.grid_hw[0] * self.grid_hw[1]:
      raise ValueError('config.mask leaves no masked patch: CAE regresses the masked ones.')
    dec = config.model.decoder
    self.width = int(dec.width)
    self.external_extras = ()
    if c.target == 'teacher':
      self.teacher = teachers.ViTTeacher(c, config.model.encoder, self.image_shape, self.encoder.patch_size, 'cae')
      self.teacher_encoder = self.teacher.module()
      self.external_extras = ('teacher',)
      out_dim = self.teacher.encoder.width
    else:
      out_dim = self.encoder.patch_size ** 2 * ch
    settings = self.module_settings()
    drop_path = float(self.encoder.drop_path)  # one rate for all three towers, as their single --drop_path
    self.regressor = LatentRegressor(depth=int(c.regressor_depth), num_heads=int(dec.num_heads),
                                     mlp_ratio=float(dec.get('mlp_ratio', 4.0)), drop_path=drop_path,
                                     layer_scale=float(c.layer_scale), dtype=settings['dtype'])
    self.decoder = CAEDecoder(depth=int(dec.depth), num_heads=int(dec.num_heads), out_dim=out_dim,
                              mlp_ratio=float(dec.get('mlp_ratio', 4.0)), drop_path=drop_path,
                              layer_scale=float(c.layer_scale), dtype=settings['dtype'],
                              attention_impl=settings['attention_impl'])
    self.model = CAEModel(self.encoder, self.regressor, self.decoder, self.width, self.grid_hw)
    self.norm_pix = bool(config.get('norm_pix_loss', True))

  # -- the teacher (target='teacher') --

  def load_external(self):
    return {'teacher': self.teacher.params(self.teacher_encoder)} if self.external_extras else {}

  def teacher_tokens(self, teacher_params, images: jax.Array) -> jax.Array:
    tokens = self.teacher_encoder.apply({'params': teacher_params}, images)['patch_tokens'].astype(jnp.float32)
    return jax.lax.stop_gradient(standardize(tokens))

  # -- method API --

  def init(self, rng, batch):
    images = self.images(batch)
    info = self.masker(jax.random.key(0), images.shape[0])
    params = self.model.init(rng, images, info)['params']
    extras = {'teacher': self.teacher.random_params(self.teacher_encoder)} if self.external_extras else {}
    return params, extras

  def predict(self, params, images: jax.Array, info: masking.MaskInfo,
              rng: jax.Array | None = None) -> dict[str, jax.Array]:
    """``latent`` (CLS + visible), ``latent_pred`` / ``latent_target`` (the masked patches', ``[B, M, D]``),
    ``logits`` (the decoder's head on them) and ``align_loss`` (the mean squared distance of the two latents).
    ``rng``: training mode (drop path) with that key; None: deterministic."""
    check_images(images, self.image_shape)
    rngs = {'dropout': rng} if rng is not None else {}
    z, predicted, target, logits = self.model.apply({'params': params}, images, info, rng is None, rngs=rngs)
    align = jnp.mean(jnp.square(predicted.astype(jnp.float32) - target.astype(jnp.float32)))
    return {'latent': z, 'latent_pred': predicted, 'latent_target': target, 'logits': logits, 'align_loss': align}

  def forward(self, params, images: jax.Array, info: masking.MaskInfo, rng: jax.Array | None = None,
              teacher_params=None) -> dict[str, jax.Array]:
    """:meth:`predict`'s outputs, ``target_loss`` (the decoder's MSE against the pixel or teacher target of the
    masked patches) and ``loss = target_loss + align_weight * align_loss``."""
    out = self.predict(params, images, info, rng)
    ids_masked = info.ids_masked
    if self.cae.target == 'teacher':
      if teacher_params is None:
        raise ValueError("config.cae.target='teacher' needs the teacher's params (extras['teacher']).")
      goal = jnp.take_along_axis(self.teacher_tokens(teacher_params, images), ids_masked[:, :, None], axis=1)
    else:
      goal = jnp.take_along_axis(pixel_target(images, self.encoder.patch_size, self.norm_pix),
                                 ids_masked[:, :, None], axis=1)
    main = jnp.mean(mse_per_token(out['logits'], goal))
    return {**out, 'target_loss': main, 'loss': main + self.cae.align_weight * out['align_loss']}

  def loss_fn(self, params, extras, batch, rng, step):
    images = self.images(batch)
    mask_rng, drop_rng = jax.random.split(rng)
    info = self.masker(mask_rng, images.shape[0])
    out = self.forward(params, images, info, drop_rng if self.encoder.drop_path else None,
                       extras.get('teacher'))
    metrics = {'loss': out['loss'], 'target_loss': out['target_loss'], 'align_loss': out['align_loss']}
    return out['loss'], (metrics, extras)

  def reconstruct(self, params, images, rng):
    if self.cae.target != 'pixels':
      raise NotImplementedError("CAE reconstructs pixels only with config.cae.target='pixels'.")
    info = self.masker(rng, images.shape[0])
    out = self.forward(params, images, info)
    b, n = info.mask.shape
    # The decoder predicts the masked patches only: put them back in place (the visible ones are shown as input).
    full = jnp.zeros((b, n, out['logits'].shape[-1]), jnp.float32)
    full = full.at[jnp.arange(b)[:, None], info.ids_masked].set(out['logits'].astype(jnp.float32))
    figures = reconstruction_images(full, info.mask, images, self.encoder.patch_size, self.grid_hw, self.norm_pix)
    return {**figures, 'loss': out['loss']}
