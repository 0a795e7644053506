"""What a converted checkpoint is: a mim_jax param tree plus the model description needed to run it.

Every converter reads its format into a :class:`Checkpoint` and writes one out, so N formats need N readers and
N writers instead of N x N converters. The param tree is the one mim_jax's modules use:

  encoder/...          the encoder's params: a :class:`~mim_jax.models.vit.ViTEncoder` ('pos_embed' only with
                       ``pos_embed='learned'``, 'norm' only with ``final_norm``) or another registered encoder
                       (``ModelSpec.encoder``, e.g. 'resnet' / 'convnext')
  encoder_batch_stats/ BatchNorm running statistics (ResNet), beside the params as the method 'none' keeps them
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

FORMAT_VERSION = 2  # 2: any registered encoder (encoder, encoder_options), BatchNorm statistics, soft_mask_rate


class DecoderSpec(ViTSize):
  """An MAE decoder's size: width, depth, heads and MLP ratio of its transformer stack."""


# ViTEncoder fields that are run settings, not architecture: a checkpoint does not record them.
RUN_SETTINGS = ('dtype', 'attention_impl', 'remat', 'drop_path', 'use_mask_token', 'parent', 'name')
VIT_POS_EMBEDS = ('sincos', 'learned', 'sincos_rows_first', 'sincos_1d', 'none')
# The ViTEncoder fields ModelSpec has fields of its own for (the rest go to encoder_options).
_VIT_SPEC_FIELDS = ('patch_size', 'width', 'depth', 'num_heads', 'mlp_ratio', 'final_norm', 'pos_embed')
# What ModelSpec records only for ViTs (left out of a ConvNet's metadata).
_VIT_ONLY = ('patch_size', 'depth', 'num_heads', 'mlp_ratio', 'pos_embed', 'final_norm', 'global_pool', 'decoder',
             'norm_pix_loss', 'soft_mask_rate', 'num_frames')


def _frozen(value):
  """A JSON-ish value as a hashable one (lists -> tuples), so a spec can key compile caches."""
  if isinstance(value, (list, tuple)):
    return tuple(_frozen(v) for v in value)
  if isinstance(value, np.generic):
    return value.item()
  return value


def freeze_options(options: Mapping[str, Any] | tuple | None) -> tuple[tuple[str, Any], ...]:
  """Encoder settings as sorted ``(name, value)`` pairs (the hashable form ModelSpec keeps)."""
  items = options.items() if isinstance(options, Mapping) else (options or ())
  return tuple(sorted((str(k), _frozen(v)) for k, v in items))


def module_options(module, skip: tuple[str, ...] = (), only_changed: bool = True) -> dict[str, Any]:
  """The architecture fields of an encoder module (run settings and ``skip`` left out; ``only_changed``: those
  that differ from the class defaults): what rebuilding it with ``type(module)(**required, **options)`` needs."""
  out = {}
  for f in dataclasses.fields(module):
    if f.name in RUN_SETTINGS or f.name in skip:
      continue
    value = getattr(module, f.name)
    if not only_changed or f.default is dataclasses.MISSING or value != f.default:
      out[f.name] = value
  return out


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Everything a checkpoint needs besides its weights: which encoder, its architecture, the input it takes.

  ``encoder`` names a registered encoder (:mod:`mim_jax.models.encoders`). For 'vit' (every format but mim_jax's
  own holds only these) the size fields below describe it and ``encoder_options`` holds its block options that
  differ from MAE's ViT (``norm='rmsnorm'``, ``rope='1d'``, ``class_token='last'``, ... : iLLaMA, CAE, CroCo).
  For any other encoder ``encoder_options`` holds its whole architecture (e.g. a ResNet's block, depths, widths,
  stem) and ``width`` is the width of its pooled feature; the ViT-only fields stay unset.
  """

  patch_size: int | None = None
  width: int | None = None  # the feature width (a ViT's token width; a ConvNet's last stage's channels)
  depth: int | None = None
  num_heads: int | None = None
  image_size: tuple[int, int] | None = None  # the training resolution (ConvNets and sin-cos ViTs take others)
  channels: int = 3
  mlp_ratio: float = 4.0
  pos_embed: str = 'sincos'  # 'sincos' (fixed, MAE) or 'learned' (a [1, 1+N, D] table incl. the CLS row), ...
  final_norm: bool = True  # False for timm global_pool='avg' models: their norm sits after pooling (fc_norm)
  fc_norm: bool = False
  num_classes: int = 0
  global_pool: str = 'token'  # the feature timm's classifier reads: 'token' (CLS) or 'avg' (mean patch token)
  decoder: DecoderSpec | None = None
  norm_pix_loss: bool | None = None  # the MAE loss target, when the source says
  pixel_mean: tuple[float, ...] | None = None  # input normalization, when the source says (0-1 pixel scale)
  pixel_std: tuple[float, ...] | None = None
  encoder: str = 'vit'
  encoder_options: tuple[tuple[str, Any], ...] = ()  # see the class docstring; freeze_options makes the form
  # A ViT with iLLaMA's soft causal mask (causal_mask='soft'): the rate it was last trained / evaluated at
  # (1 = full attention, 0 = causal; None = 0, the end of iLLaMA's schedule).
  soft_mask_rate: float | None = None
  # A video ViT (encoder option tubelet_size > 0, VideoMAE): the clip length it was trained on. Inputs are then
  # [B, num_frames, H, W, C] clips; None: images.
  num_frames: int | None = None

  def __post_init__(self):
    object.__setattr__(self, 'encoder_options', freeze_options(self.encoder_options))
    if self.image_size is None or self.width is None:
      raise ValueError('a ModelSpec needs image_size and width.')
    object.__setattr__(self, 'image_size', (int(self.image_size[0]), int(self.image_size[1])))
    if not self.is_vit:
      set_vit = [k for k in ('patch_size', 'depth', 'num_heads', 'decoder', 'soft_mask_rate', 'num_frames')
                 if getattr(self, k) is not None]
      if set_vit:
        raise ValueError(f'{set_vit} describe ViTs; a {self.encoder!r} encoder keeps its architecture in '
                         'encoder_options.')
      return
    missing = [k for k in ('patch_size', 'depth', 'num_heads') if getattr(self, k) is None]
    if missing:
      raise ValueError(f'a ViT ModelSpec needs {missing}.')
    if self.pos_embed not in VIT_POS_EMBEDS:
      raise ValueError(f'pos_embed must be one of {VIT_POS_EMBEDS}, got {self.pos_embed!r}.')
    if self.global_pool not in ('token', 'avg'):
      raise ValueError(f"global_pool must be 'token' or 'avg', got {self.global_pool!r}.")
    h, w = self.image_size
    if h % self.patch_size or w % self.patch_size:
      raise ValueError(f'image size {h}x{w} is not a multiple of the patch size {self.patch_size}.')
    if self.width % self.num_heads:
      raise ValueError(f'width {self.width} is not divisible by num_heads {self.num_heads}.')
    tubelet = int(self.options.get('tubelet_size', 0) or 0)
    if bool(tubelet) != (self.num_frames is not None):
      raise ValueError(f'a video ViT (tubelet_size {tubelet}) needs num_frames, an image ViT none; got num_frames='
                       f'{self.num_frames}.')
    if tubelet and (int(self.num_frames) < 1 or int(self.num_frames) % tubelet):
      raise ValueError(f'num_frames {self.num_frames} is not a positive multiple of the tubelet size {tubelet}.')

  @classmethod
  def for_encoder(cls, module, image_shape: tuple[int, ...], **fields) -> ModelSpec:
    """The spec of an encoder module (any registered encoder; run settings such as dtype or drop path are not
    recorded) for images ``(H, W, C)`` or, for a video ViT, clips ``(T, H, W, C)``; ``fields``: the rest
    (``fc_norm``, ``num_classes``, ``pixel_mean``, ...)."""
    import jax
    import jax.numpy as jnp

    from mim_jax.models.encoders import ENCODERS
    from mim_jax.models.vit import ViTEncoder

    if len(image_shape) == 4:  # a clip
      fields['num_frames'] = int(image_shape[0])
      image_shape = image_shape[1:]
    h, w, c = (int(v) for v in image_shape)
    if isinstance(module, ViTEncoder):
      return cls(patch_size=module.patch_size, width=module.width, depth=module.depth, num_heads=module.num_heads,
                 mlp_ratio=module.mlp_ratio, final_norm=module.final_norm, pos_embed=module.pos_embed,
                 image_size=(h, w), channels=c, encoder_options=module_options(module, _VIT_SPEC_FIELDS), **fields)
    names = [n for n, registered in ENCODERS.items() if type(module) is registered]
    if not names:
      raise ValueError(f'{type(module).__name__} is not a registered encoder (@register_encoder): a checkpoint '
                       'could not name it.')
    images = jax.ShapeDtypeStruct((1, h, w, c), jnp.float32)
    out = jax.eval_shape(lambda x: module.init_with_output(jax.random.key(0), x)[0], images)
    return cls(encoder=names[0], width=int(out['pooled'].shape[-1]), image_size=(h, w), channels=c,
               encoder_options=module_options(module, only_changed=False), **fields)

  @property
  def input_shape(self) -> tuple[int, ...]:
    """One example's shape: ``(H, W, C)``, or ``(T, H, W, C)`` for a video ViT."""
    frames = (self.num_frames,) if self.num_frames else ()
    return (*frames, *self.image_size, self.channels)

  @property
  def is_vit(self) -> bool:
    return self.encoder == 'vit'

  @property
  def options(self) -> dict[str, Any]:
    return dict(self.encoder_options)

  @property
  def is_plain_vit(self) -> bool:
    """MAE's ViT (no block options, a sin-cos or learned table): what timm / HF / official-MAE files describe."""
    return self.is_vit and not self.encoder_options and self.pos_embed in ('sincos', 'learned')

  def require_plain_vit(self, what: str) -> None:
    """Raises a one-line error when ``what`` (a format, an operation) cannot hold this model."""
    if self.is_plain_vit:
      return
    model = (f'a {self.encoder!r} encoder' if not self.is_vit else
             f'a ViT with block options {self.options or {"pos_embed": self.pos_embed}}')
    raise ValueError(f'{what} holds plain MAE-style ViTs; this checkpoint is {model}: keep it as a mim_jax '
                     '.safetensors file (--to mim_jax) or read it with mim_jax.features().')

  @property
  def grid(self) -> tuple[int, int]:
    """The ViT's patch grid at ``image_size``."""
    if not self.is_vit:
      raise ValueError(f'a {self.encoder!r} encoder has no patch grid.')
    return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid[0] * self.grid[1]

  def build_encoder(self, **overrides):
    """The encoder module (``overrides``: run settings such as ``dtype`` or ``drop_path``)."""
    if self.is_vit:
      from mim_jax.models.vit import ViTEncoder

      return ViTEncoder(patch_size=self.patch_size, width=self.width, depth=self.depth, num_heads=self.num_heads,
                        mlp_ratio=self.mlp_ratio, final_norm=self.final_norm, pos_embed=self.pos_embed,
                        **self.options, **overrides)
    from mim_jax.models.encoders import ENCODERS

    return ENCODERS.get(self.encoder).from_config(self.options, **overrides)

  def mae_config(self, mask_ratio: float = 0.75):
    """The mim_jax MAE method config for this model (needs a decoder)."""
    import ml_collections

    self.require_plain_vit('the MAE method')
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
    out['encoder_options'] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.encoder_options}
    if not self.is_vit:
      for key in _VIT_ONLY:
        out.pop(key)
    elif self.num_frames is None:  # image models' metadata reads as it did before video models existed
      out.pop('num_frames')
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
    d['encoder_options'] = freeze_options(d.get('encoder_options'))
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

  @property
  def batch_stats(self) -> dict | None:
    """The encoder's BatchNorm running statistics (ConvNets with BatchNorm), else None."""
    return self.params.get('encoder_batch_stats')

  def encoder_variables(self) -> dict:
    """``{'params': ..., ['batch_stats': ...]}`` for the encoder's ``apply``."""
    stats = self.batch_stats
    return {'params': self.params['encoder'], **({'batch_stats': stats} if stats else {})}

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

  images = jax.ShapeDtypeStruct((1, *spec.input_shape), jnp.float32)
  variables = nn.meta.unbox(jax.eval_shape(spec.build_encoder().init, jax.random.key(0), images))
  shapes = {f'encoder/{k}': tuple(v.shape) for k, v in flatten(variables['params']).items()}
  shapes.update({f'encoder_batch_stats/{k}': tuple(v.shape)
                 for k, v in flatten(variables.get('batch_stats', {})).items()})
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
    elif path.startswith('encoder_batch_stats/') and path.endswith('/var'):  # a running variance is positive
      value = 1.0 + 0.1 * np.abs(rng.standard_normal(shape))
    elif path.endswith('/kernel'):
      value = rng.standard_normal(shape) / np.sqrt(shape[0])
    else:
      value = 0.1 * rng.standard_normal(shape)
    flat[path] = value.astype(np.float32)
  return Checkpoint(unflatten(flat), spec)
