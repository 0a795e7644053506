"""Point-MAE (Pang et al., ECCV 2022, "Masked Autoencoders for Point Cloud Self-supervised Learning").

* Tokens: groups of the cloud (farthest-point centres, k nearest points each) embedded by a mini-PointNet
  (:mod:`mim_jax.models.point_transformer`).
* Mask: ``int(ratio * G)`` groups masked per cloud, uniformly (``mask.name='random'``, ``count='masked'``: the
  official count, 38 of 64 at 0.6). The encoder reads the visible groups with their centre embeddings.
* Decoder (:class:`PointMAEDecoder`): as wide as the encoder (no projection), the visible tokens then a mask token
  per masked group, each with the decoder's own centre embedding added before every block; norm; a linear head to
  ``group_size`` points (xyz fastest) for each masked group.
* Loss: Chamfer-L2 between each masked group's prediction and its points (relative to the centre): the mean over
  every predicted point of the squared distance to the nearest true point, plus the same the other way (summed,
  not halved), averaged over the masked groups of the batch.

Batch: ``points`` ``[N, 3]`` (``N = data.num_points``) and ``label``. Frozen features: the encoder on every group,
``pooled`` = max + mean of the tokens. State: ``params = {'encoder', 'decoder'}``, ``extras = {'batch_stats':
{'encoder': ...}}`` (the mini-PointNet's BatchNorm). Official code: Pang-Yatian/Point-MAE ``models/Point_MAE.py``;
parity fixtures in tests/fixtures/official_pointmae/ (with pure-PyTorch stand-ins for its CUDA FPS, kNN and Chamfer).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mim_jax import masking
from mim_jax.data.batch import Field
from mim_jax.methods.base import Method, config_block, register, require_hidden_tokens
from mim_jax.models.encoders import build_encoder
from mim_jax.models.point_transformer import CentreEmbedding, PointTransformerEncoder, point_blocks
from mim_jax.models.vit import _param_init, layer_norm

trunc_normal = nn.initializers.truncated_normal(stddev=0.02)


def point_mae_defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'decoder_depth': 4,
      'decoder_heads': 6,
      'decoder_drop_path': 0.1,  # the official decoder's drop path rises to this
  })


class PointMAEDecoder(nn.Module):
  width: int
  depth: int
  num_heads: int
  group_size: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  dtype: Any = jnp.float32
  attention_impl: str = 'auto'

  @nn.compact
  def __call__(self, latent: jax.Array, center: jax.Array, ids_keep: jax.Array, ids_masked: jax.Array,
               deterministic: bool) -> jax.Array:
    """``[B, M, group_size, 3]``: the predicted points of the masked groups (``ids_masked`` order)."""
    b, k, d = latent.shape
    m = ids_masked.shape[1]
    pos = CentreEmbedding(self.width, self.dtype, name='pos_embed')(center)
    take = lambda x, ids: jnp.take_along_axis(x, ids[..., None], axis=1)  # noqa: E731
    token = self.param('mask_token', _param_init(trunc_normal, (None, None, None)), (1, 1, d), jnp.float32)
    x = jnp.concatenate([latent, jnp.broadcast_to(token.astype(latent.dtype), (b, m, d))], axis=1)
    pos = jnp.concatenate([take(pos, ids_keep), take(pos, ids_masked)], axis=1)
    queries = jnp.broadcast_to(jnp.arange(k, k + m), (b, m))
    x = point_blocks(self, x, pos, self.depth, self.num_heads, self.mlp_ratio, self.drop_path, deterministic,
                     prefix='blocks', query_ids=queries)
    x = layer_norm(self.dtype, 'norm', 1e-5)(x)
    x = nn.Dense(3 * self.group_size, dtype=self.dtype, param_dtype=jnp.float32, name='head')(x)
    return x.reshape(b, m, self.group_size, 3)


class PointMAEModel(nn.Module):
  encoder: PointTransformerEncoder
  decoder: PointMAEDecoder

  def __call__(self, points, ids_keep, ids_masked, deterministic: bool):
    out = self.encoder(points, deterministic, ids_keep)
    pred = self.decoder(out['tokens'], out['center'], ids_keep, ids_masked, deterministic)
    target = jnp.take_along_axis(out['neighborhood'], ids_masked[:, :, None, None], axis=1)
    return {'latent': out['tokens'], 'pred': pred, 'target': target, 'center': out['center'],
            'neighborhood': out['neighborhood']}


def chamfer_l2(pred: jax.Array, target: jax.Array) -> jax.Array:
  """``[..., P, 3]`` vs ``[..., Q, 3]``: mean over every predicted point of the squared distance to its nearest target
  point plus the mean over every target point of the squared distance to its nearest prediction."""
  d = jnp.sum(jnp.square(pred[..., :, None, :] - target[..., None, :, :]), axis=-1)
  return jnp.mean(jnp.min(d, axis=-1)) + jnp.mean(jnp.min(d, axis=-2))


@register('point_mae')
class PointMAE(Method):
  class_tokens = ('none',)
  no_weight_decay = ('mask_token',)

  def __init__(self, config, facts):
    super().__init__(config, facts)
    self.cfg = config_block(config, 'point_mae', point_mae_defaults())
    settings = self.module_settings()
    self.encoder = build_encoder(config.model.encoder, dtype=settings['dtype'],
                                 attention_impl=settings['attention_impl'])
    if not isinstance(self.encoder, PointTransformerEncoder):
      raise ValueError(f'point_mae pre-trains the point transformer (config.model.encoder.name='
                       f"'point_transformer'), got {type(self.encoder).__name__}.")
    self.num_points = int(config.data.get('num_points', 1024))
    if self.encoder.num_groups > self.num_points or self.encoder.group_size > self.num_points:
      raise ValueError(f'{self.encoder.num_groups} groups of {self.encoder.group_size} points need clouds of at '
                       f'least that many points; data.num_points is {self.num_points}.')
    e = self.encoder
    self.decoder = PointMAEDecoder(e.width, int(self.cfg.decoder_depth), int(self.cfg.decoder_heads), e.group_size,
                                   e.mlp_ratio, float(self.cfg.decoder_drop_path), settings['dtype'],
                                   settings['attention_impl'])
    self.model = PointMAEModel(self.encoder, self.decoder)
    mask_cfg = {k: v for k, v in dict(config.mask).items() if k != 'name'}
    self.masker = masking.build(config.mask.name, masking.Grid(1, e.num_groups), **mask_cfg)
    require_hidden_tokens(self.masker, self.name, config)

  def batch_fields(self, train: bool = True) -> dict[str, Field]:
    del train
    return {'points': Field((self.num_points, 3), 'float32'), 'label': Field((), 'int32')}

  def record_transform(self, data_cfg, source, train: bool):
    from mim_jax.data.shapes3d import PointRecord

    return PointRecord(self.num_points, train, source.image_key, source.label_key,
                       bool(data_cfg.get('point_augment', True)))

  def encoder_inputs(self, batch):
    return batch['points']

  def points(self, batch) -> jax.Array:
    pts = batch['points']
    if pts.ndim != 3 or tuple(pts.shape[1:]) != (self.num_points, 3):
      raise ValueError(f'expected point clouds of shape [batch, {self.num_points}, 3], got {tuple(pts.shape)}; '
                       'check data.num_points.')
    return pts

  def init(self, rng, batch):
    pts = self.points(batch)
    info = self.masker(jax.random.key(0), pts.shape[0])
    variables = self.model.init({'params': rng, 'dropout': rng}, pts, info.ids_keep, info.ids_masked, True)
    return variables['params'], {'batch_stats': nn.meta.unbox(variables['batch_stats'])}

  def forward(self, params, batch_stats, points, info: masking.MaskInfo, train: bool = True,
              dropout_rng: jax.Array | None = None) -> dict:
    """Predictions, targets and the loss; ``train``: batch statistics (and the updated running ones)."""
    variables = {'params': params, 'batch_stats': batch_stats}
    args = (points, info.ids_keep, info.ids_masked, not train)
    if train:
      rngs = {'dropout': dropout_rng} if dropout_rng is not None else {}
      out, updated = self.model.apply(variables, *args, rngs=rngs, mutable=['batch_stats'])
      batch_stats = updated['batch_stats']
    else:
      out = self.model.apply(variables, *args)
    loss = chamfer_l2(out['pred'].astype(jnp.float32), out['target'])
    return {**out, 'loss': loss, 'batch_stats': batch_stats}

  def loss_fn(self, params, extras, batch, rng, step):
    pts = self.points(batch)
    mask_rng, drop_rng = jax.random.split(rng)
    out = self.forward(params, extras['batch_stats'], pts, self.masker(mask_rng, pts.shape[0]), True, drop_rng)
    return out['loss'], ({'loss': out['loss']}, {**extras, 'batch_stats': out['batch_stats']})

  # -- evaluation: every group, the encoder's running statistics --

  def eval_params(self, params, extras):
    return {**params, 'batch_stats': extras['batch_stats']}

  def encoder_variables(self, params) -> dict:
    return {'params': params['encoder'], 'batch_stats': params['batch_stats']['encoder']}
