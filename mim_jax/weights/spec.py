"""What a converted checkpoint is: a mim_jax param tree plus the model description needed to run it.

Every converter reads its format into a :class:`Checkpoint` and writes one out, so N formats need N readers and
N writers instead of N x N converters. The param tree is the one mim_jax's modules use:

  encoder/...          a :class:`~mim_jax.models.vit.ViTEncoder` ('pos_embed' only with ``pos_embed='learned'``,
                       'norm' only with ``final_norm``)
  decoder/...          an MAE decoder (:class:`~mim_jax.models.decoders.MAEDecoder`), when the checkpoint keeps it
  fc_norm/{scale,bias} LayerNorm on the mean of the patch tokens (timm ``global_pool='avg'`` models)
  head/{kernel,bias}   a classifier (fine-tuned checkpoints); kept so that exporting back loses nothing
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from mim_jax.models.vit import ViTSize

FORMAT_VERSION = 1


class DecoderSpec(ViTSize):
  """An MAE decoder's size: width, depth, heads and MLP ratio of its transformer stack."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Everything a ViT (+ MAE decoder) checkpoint needs besides its weights."""

  patch_size: int
  width: int
  depth: int
  num_heads: int
  image_size: tuple[int, int]
  channels: int = 3
  mlp_ratio: float = 4.0
  pos_embed: str = 'sincos'  # 'sincos' (fixed, MAE) or 'learned' (a [1, 1+N, D] table incl. the CLS row)
  final_norm: bool = True  # False for timm global_pool='avg' models: their norm sits after pooling (fc_norm)
  fc_norm: bool = False
  num_classes: int = 0
  global_pool: str = 'token'  # the feature timm's classifier reads: 'token' (CLS) or 'avg' (mean patch token)
  decoder: DecoderSpec | None = None
  norm_pix_loss: bool | None = None  # the MAE loss target, when the source says
  pixel_mean: tuple[float, ...] | None = None  # input normalization, when the source says (0-1 pixel scale)
  pixel_std: tuple[float, ...] | None = None

  def __post_init__(self):
    if self.pos_embed not in ('sincos', 'learned'):
      raise ValueError(f"pos_embed must be 'sincos' or 'learned', got {self.pos_embed!r}.")
    if self.global_pool not in ('token', 'avg'):
      raise ValueError(f"global_pool must be 'token' or 'avg', got {self.global_pool!r}.")
    h, w = self.image_size
    if h % self.patch_size or w % self.patch_size:
      raise ValueError(f'image size {h}x{w} is not a multiple of the patch size {self.patch_size}.')
    if self.width % self.num_heads:
      raise ValueError(f'width {self.width} is not divisible by num_heads {self.num_heads}.')

  @property
  def grid(self) -> tuple[int, int]:
    return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid[0] * self.grid[1]

  def encoder(self, **overrides):
    from mim_jax.models.vit import ViTEncoder

    return ViTEncoder(patch_size=self.patch_size, width=self.width, depth=self.depth, num_heads=self.num_heads,
                      mlp_ratio=self.mlp_ratio, final_norm=self.final_norm, pos_embed=self.pos_embed, **overrides)

  def mae_config(self, mask_ratio: float = 0.75):
    """The mim_jax MAE method config for this model (needs a decoder)."""
    import ml_collections

    if self.decoder is None:
      raise ValueError('this checkpoint has no MAE decoder; an encoder-only checkpoint cannot run the MAE method.')
    if self.pos_embed != 'sincos' or not self.final_norm:
      raise ValueError('the MAE method uses the fixed sin-cos table and the final norm; this checkpoint has '
                       f'pos_embed={self.pos_embed!r}, final_norm={self.final_norm}.')
    d = self.decoder
    return ml_collections.ConfigDict({
        'method': 'mae',
        'norm_pix_loss': bool(self.norm_pix_loss) if self.norm_pix_loss is not None else True,
        'model': {
            'encoder': {'patch_size': self.patch_size, 'width': self.width, 'depth': self.depth,
                        'num_heads': self.num_heads, 'mlp_ratio': self.mlp_ratio},
            'decoder': {'width': d.width, 'depth': d.depth, 'num_heads': d.num_heads, 'mlp_ratio': d.mlp_ratio},
        },
        'mask': {'name': 'random', 'ratio': float(mask_ratio)},
    })

  def to_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out['image_size'] = list(self.image_size)
    return out

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
    d = dict(d)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f'unknown model setting(s) {unknown} in the checkpoint metadata; known: {sorted(known)}. '
                       'Was it written by a newer mim_jax?')
    d['image_size'] = tuple(int(v) for v in d['image_size'])
    if d.get('decoder') is not None:
      d['decoder'] = DecoderSpec(**d['decoder'])
    for key in ('pixel_mean', 'pixel_std'):
      if d.get(key) is not None:
        d[key] = tuple(float(v) for v in d[key])
    return cls(**d)

  def to_json(self) -> str:
    return json.dumps({'format_version': FORMAT_VERSION, **self.to_dict()}, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> ModelSpec:
    d = json.loads(text)
    version = d.pop('format_version', FORMAT_VERSION)
    if version > FORMAT_VERSION:
      raise ValueError(f'checkpoint format version {version} is newer than this mim_jax ({FORMAT_VERSION}); '
                       'upgrade mim_jax.')
    return cls.from_dict(d)


@dataclasses.dataclass
class Checkpoint:
  """A mim_jax param tree (nested dicts of float32 numpy arrays) and the spec that runs it."""

  params: dict
  spec: ModelSpec
  notes: list[str] = dataclasses.field(default_factory=list)  # what a conversion assumed or dropped

  def encoder_only(self) -> Checkpoint:
    params = {k: v for k, v in self.params.items() if k != 'decoder'}
    return Checkpoint(params, dataclasses.replace(self.spec, decoder=None), list(self.notes))

  def check(self) -> Checkpoint:
    """Raises a ValueError naming every missing, unexpected or mis-shaped parameter; returns self."""
    expected = expected_shapes(self.spec)
    got = {path: tuple(np.shape(v)) for path, v in flatten(self.params).items()}
    problems = [f'missing {p} {s}' for p, s in sorted(expected.items()) if p not in got]
    problems += [f'unexpected {p} {s}' for p, s in sorted(got.items()) if p not in expected]
    problems += [f'{p}: shape {got[p]}, the model needs {s}' for p, s in sorted(expected.items())
                 if p in got and got[p] != s]
    if problems:
      shown = '; '.join(problems[:8]) + (f'; ... ({len(problems)} problems)' if len(problems) > 8 else '')
      raise ValueError(f'the weights do not fit the model {self.spec}: {shown}')
    return self


def expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
  """'/'-joined param path -> shape, from the mim_jax modules themselves (abstract init, no compute)."""
  return dict(_expected_shapes(spec))


@functools.lru_cache(maxsize=32)  # tracing the modules costs ~1 s; a conversion checks the same spec repeatedly
def _expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from mim_jax.models.decoders import MAEDecoder

  h, w = spec.image_size
  images = jax.ShapeDtypeStruct((1, h, w, spec.channels), jnp.float32)
  enc = nn.meta.unbox(jax.eval_shape(spec.encoder().init, jax.random.key(0), images))['params']
  shapes = {f'encoder/{k}': tuple(v.shape) for k, v in flatten(enc).items()}
  if spec.decoder is not None:
    d = spec.decoder
    dec = MAEDecoder(width=d.width, depth=d.depth, num_heads=d.num_heads, mlp_ratio=d.mlp_ratio,
                     out_dim=spec.patch_size ** 2 * spec.channels, grid_hw=spec.grid)
    n = spec.num_patches
    latent = jax.ShapeDtypeStruct((1, 1 + n, spec.width), jnp.float32)
    ids = jax.ShapeDtypeStruct((1, n), jnp.int32)
    tree = nn.meta.unbox(jax.eval_shape(dec.init, jax.random.key(0), latent, ids))['params']
    shapes.update({f'decoder/{k}': tuple(v.shape) for k, v in flatten(tree).items()})
  if spec.fc_norm:
    shapes.update({'fc_norm/scale': (spec.width,), 'fc_norm/bias': (spec.width,)})
  if spec.num_classes:
    shapes.update({'head/kernel': (spec.width, spec.num_classes), 'head/bias': (spec.num_classes,)})
  return shapes


def flatten(tree: Mapping, prefix: str = '') -> dict[str, Any]:
  """Nested dicts -> {'a/b/c': leaf}."""
  out = {}
  for key, value in tree.items():
    path = f'{prefix}{key}'
    if isinstance(value, Mapping):
      out.update(flatten(value, path + '/'))
    else:
      out[path] = value
  return out


def unflatten(flat: Mapping[str, Any]) -> dict:
  """{'a/b/c': leaf} -> nested dicts."""
  tree: dict = {}
  for path, value in flat.items():
    *parents, leaf = path.split('/')
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
    if leaf in node:
      raise ValueError(f'duplicate parameter {path}')
    node[leaf] = value
  return tree


def random_checkpoint(spec: ModelSpec, seed: int = 0) -> Checkpoint:
  """Random weights of the right shapes for ``spec`` (tests, smoke checks; not a training initialisation).

  Every leaf is random, biases and norms included, so a conversion that mixes up any pair of tensors shows.
  Kernels are scaled by 1/sqrt(fan-in) and norm scales sit around 1, so activations stay O(1).
  """
  rng = np.random.default_rng(seed)
  flat = {}
  for path, shape in expected_shapes(spec).items():
    if path.endswith('/scale'):
      value = 1.0 + 0.1 * rng.standard_normal(shape)
    elif path.endswith('/kernel'):
      value = rng.standard_normal(shape) / np.sqrt(shape[0])
    else:
      value = 0.1 * rng.standard_normal(shape)
    flat[path] = value.astype(np.float32)
  return Checkpoint(unflatten(flat), spec)
