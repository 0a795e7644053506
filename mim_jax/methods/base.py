"""The method contract: what the train loop and the evaluators ask of a pre-training method.

A method = inputs x mask x encoder x target x decoder/head x loss, in one file that subclasses :class:`Method`
and registers itself (``@register('name')``; methods are found by discovery, nothing lists them). Two layers:

:class:`Objective`: what the train loop needs (pre-training methods, and fine-tuning, use the same loop):

* **the batch**: ``batch_fields(train)`` declares the named arrays of one example (``image``; ``view1`` /
  ``view2``; ``video`` [T, H, W, C]; ``points`` [N, 3]; ...), and ``record_transform(data_cfg, source, train)``
  the host-side function that makes them from a stored record (None: one augmented image and its label). The
  pipeline stacks every field and normalizes pixel fields with their own statistics; the AOT fit check and the
  compiled step use the declared shapes. ``init`` receives an example batch.
* **the state**: ``init(rng, batch) -> (params, extras)``: trainable parameters and the method's other state
  (EMA teachers, running statistics, ...), both in the train state; ``loss_fn(params, extras, batch, rng, step)
  -> (loss, (metrics, extras))``, pure and jit-able; ``after_update(params, extras, step) -> extras`` runs in
  the jitted step after the optimizer update, on the new params (an EMA without a one-step lag).
* **external weights**: the ``extras`` keys named in ``external_extras`` (a frozen teacher) are filled on the
  host by ``load_external()`` after every init and every restore, placed with the state's shardings, and never
  written into checkpoints (they are reloaded from their source instead).

:class:`Method` adds what evaluation and export need, all through the **feature contract** of the encoder
(:mod:`mim_jax.models.encoders`): ``encode(params, batch) -> dict(cls | None, patch_tokens, pooled[,
feature_map])`` without masking, ``feature(params, batch, name)`` for probes, ``encoder_module()`` /
``encoder_params(params)``, the layer ids for layer-wise lr decay, the fine-tune encoder, and optionally
``reconstruct`` for figures. A method never reads the dataset or asks the trainer: it is built from the config
and :class:`Facts` (the dataset's facts and the resolved schedule length).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mim_jax.data import batch as batch_lib
from mim_jax.data.batch import Field
from mim_jax.data.pipeline import DatasetInfo
from mim_jax.models.encoders import build_encoder
from mim_jax.models.vit import ViTEncoder, dtype_from_name
from mim_jax.utils.registry import Registry

METHODS = Registry('method', 'mim_jax.methods', skip=('base', 'teachers', 'two_view'),
                   hint=' (config.method; a method registers itself with @register)')
register = METHODS.register


@dataclasses.dataclass(frozen=True)
class Facts:
  """What a method is told about its run (it never opens the dataset or asks the trainer)."""

  data: DatasetInfo
  total_steps: int | None = None  # the resolved schedule length; None where nothing trains (evaluation, export)

  @classmethod
  def for_images(cls, image_shape: tuple[int, int, int], total_steps: int | None = None,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> Facts:
    """Facts for a method run on arrays rather than a dataset (tests, parity checks, converted checkpoints)."""
    c = int(image_shape[-1])
    info = DatasetInfo(image_shape=tuple(int(d) for d in image_shape), num_train=0, num_eval=0, num_classes=None,
                       mean=tuple(mean) if mean is not None else (0.0,) * c,
                       std=tuple(std) if std is not None else (1.0,) * c)
    return cls(info, total_steps)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.data.image_shape)


def build(config: ml_collections.ConfigDict, facts: Facts) -> Method:
  """The method named by ``config.method``, built from the config and the run's facts."""
  if not isinstance(facts, Facts):
    raise TypeError(f'methods.build needs Facts (Facts.for_images(shape) outside a run), got {type(facts).__name__}.')
  return METHODS.get(config.method)(config, facts)


def method_names() -> list[str]:
  return METHODS.names()


class Objective(abc.ABC):
  """What the train loop runs: a batch declaration, an init, a loss and the state's lifecycle hooks."""

  name: str = ''
  external_extras: tuple[str, ...] = ()  # extras keys filled by load_external() and never checkpointed
  no_weight_decay: tuple[str, ...] = ()  # parameter names exempt from weight decay (besides biases and vectors)

  @abc.abstractmethod
  def batch_fields(self, train: bool = True) -> dict[str, Field]:
    """The named arrays of one train (or eval) example, without the batch axis."""

  def record_transform(self, data_cfg, source, train: bool) -> Callable | None:
    """The host function ``(record, rng) -> {field: array}`` making one example from a stored record
    (``source``: a :class:`mim_jax.data.pipeline.RecordSource`); None: the default image transform."""
    del data_cfg, source, train
    return None

  def example_batch(self, batch_size: int = 2, train: bool = True) -> dict[str, np.ndarray]:
    """An all-zero batch of the declared fields (what ``init`` is traced with)."""
    return batch_lib.zeros(self.batch_fields(train), batch_size)

  @abc.abstractmethod
  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> tuple[Any, Any]:
    """``(params, extras)`` from an example batch."""

  @abc.abstractmethod
  def loss_fn(self, params, extras, batch, rng, step) -> tuple[jax.Array, tuple[dict, Any]]:
    """``(loss, (metrics, extras))``; pure and jit-able."""

  def after_update(self, params, extras, step):
    """``extras`` after the optimizer has updated ``params`` (inside the jitted step; skipped with the update
    when a step is not finite). Default: unchanged."""
    del params, step
    return extras

  def load_external(self) -> dict[str, Any]:
    """``{key: host pytree}`` for every key of ``external_extras`` (e.g. a teacher's weights read from a
    workdir or a converted checkpoint), shaped like ``init``'s value for that key."""
    if self.external_extras:
      raise NotImplementedError(f'{type(self).__name__} declares external_extras {self.external_extras} but no '
                                'load_external().')
    return {}


class Method(Objective):
  """A pre-training method: an :class:`Objective` with an encoder behind the feature contract."""

  # Where the method's code can take a ViT's CLS token (model.encoder.class_token): most index the token sequence
  # with CLS first; one that reads only the feature contract, or reorders, may take more.
  class_tokens: tuple[str, ...] = ('first',)

  def __init__(self, config: ml_collections.ConfigDict, facts: Facts):
    self.config = config
    self.facts = facts

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return self.facts.image_shape

  def module_settings(self) -> dict:
    """The run's compute dtype, attention implementation and rematerialization, as the model modules take them."""
    c = self.config
    return dict(dtype=dtype_from_name(c.get('compute_dtype', 'float32')),
                attention_impl=c.get('attention_impl', 'auto'), remat=c.get('remat', False))

  def vit_encoder(self, needs: str, **overrides) -> ViTEncoder:
    """The configured encoder, which must be the ViT (``needs``: why, for the error), with the run's settings."""
    encoder = build_encoder(self.config.model.encoder, **self.module_settings(), **overrides)
    if not isinstance(encoder, ViTEncoder):
      raise ValueError(f'{self.name} needs the ViT encoder ({needs}), got config.model.encoder.name='
                       f'{self.config.model.encoder.get("name")!r}.')
    if encoder.class_token not in self.class_tokens:
      raise ValueError(f'{self.name} takes model.encoder.class_token in {self.class_tokens} ({needs}), got '
                       f'{encoder.class_token!r}.')
    return encoder

  def batch_fields(self, train: bool = True) -> dict[str, Field]:
    del train
    return batch_lib.image_fields(self.image_shape)

  # -- the encoder and its features --

  def encoder_module(self):
    """The encoder (a registered flax module, :mod:`mim_jax.models.encoders`), as pre-trained: ``self.encoder``
    unless a method overrides this."""
    return self.encoder

  def images(self, batch: dict[str, jax.Array]) -> jax.Array:
    """``batch['image']``, checked against the shape the method was built for."""
    check_images(batch['image'], self.image_shape)
    return batch['image']

  def encoder_params(self, params):
    return params['encoder']

  def encoder_inputs(self, batch: dict[str, jax.Array]) -> jax.Array:
    """What the frozen encoder reads from an eval batch (``batch_fields(train=False)``)."""
    return batch['image']

  def eval_params(self, params, extras):
    """The tree evaluation reads as ``params`` (``encode``, ``feature``, ``reconstruct``, export) from the train
    state's ``params`` and ``extras``: ``params`` unless the encoder needs state from the extras (SparK's BatchNorm
    running statistics). Every reader of a run (probes, monitors, export, teachers) passes through here."""
    del extras
    return params

  def encoder_variables(self, params) -> dict:
    """The flax variables the frozen encoder is applied with: ``{'params': ...}``, plus ``'batch_stats'`` for an
    encoder with BatchNorm (a method that has one keeps them; see methods/none.py)."""
    return {'params': self.encoder_params(params)}

  def encode(self, params, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The encoder's feature dict without masking (``cls`` or None, ``patch_tokens``, ``pooled``, ...)."""
    return self.encoder_module().apply(self.encoder_variables(params), self.encoder_inputs(batch))

  def feature(self, params, batch: dict[str, jax.Array], name: str) -> jax.Array:
    """One ``[B, D]`` float32 feature of the contract for probes: 'cls' or 'pooled'."""
    out = self.encode(params, batch)
    if name not in ('cls', 'pooled'):
      raise ValueError(f"the probe feature must be 'cls' or 'pooled', got {name!r}.")
    if out.get(name) is None:
      raise ValueError(f"method {self.name!r}'s encoder has no {name!r} feature (it returns "
                       f"{sorted(k for k, v in out.items() if v is not None)}); use feature='pooled'.")
    return out[name].astype(jnp.float32)

  @property
  def num_layers(self) -> int:
    """Layers for layer-wise lr decay: ids run from 0 (embeddings) to ``num_layers`` (after the encoder)."""
    return self.encoder_module().num_layers

  def layer_id(self, names) -> int:
    """The layer id of an encoder parameter from the names along its path inside the encoder."""
    return self.encoder_module().layer_id(names)

  def finetune_encoder(self, *, drop_path: float, pooled: bool, dtype, remat):
    """The encoder as fine-tuning builds it (see ``for_finetuning`` in the encoder contract)."""
    return self.encoder_module().for_finetuning(drop_path=drop_path, pooled=pooled, dtype=dtype, remat=remat)

  def finetune_fresh(self) -> tuple[str, ...]:
    """Top-level entries of the fine-tune encoder's params (and BatchNorm statistics) that pre-training did not
    train: they start from the fine-tune's own init (Selfie pre-trains the first ResNet stages only). Default:
    none, so the pre-trained encoder must fit the fine-tune encoder exactly."""
    return ()

  def reconstruct(self, params, images, rng) -> dict[str, jax.Array]:
    raise NotImplementedError(f'method {self.name!r} does not reconstruct pixels.')


def eval_params_from_workdir(method: Method, workdir: str, step: int | None = None,
                             directory: str | None = None) -> tuple[Any, int]:
  """``(method.eval_params(params, extras), step)`` of a run's checkpoint as host arrays: the extras are read only
  for a method whose evaluation needs them (``eval_params`` overridden)."""
  from mim_jax import workdir as workdir_lib

  if type(method).eval_params is Method.eval_params:
    return workdir_lib.read_params(workdir, step, directory)
  (params, extras), step = workdir_lib.read_state_parts(workdir, ('params', 'extras'), step, directory)
  return method.eval_params(params, extras), step


def reconstructs(method) -> bool:
  """Whether ``method`` overrides :meth:`Method.reconstruct` (draws reconstruction figures)."""
  return type(method).reconstruct is not Method.reconstruct


def config_block(config: ml_collections.ConfigDict, name: str,
                 defaults: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A method's own config block (``config.<name>``) over its defaults; a field the defaults lack is an error that
  names the known ones (a typo must not silently fall back to a default)."""
  given = dict(config.get(name, None) or {})
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ValueError(f'unknown config.{name} field(s) {unknown}; known: {sorted(defaults)}.')
  defaults.update(given)
  return defaults


def require_hidden_tokens(masker, method: str, config) -> None:
  """A one-line error for a mask that hides nothing when ``method``'s loss lives on the hidden tokens: every step
  would have loss and gradients 0, and the run would train nothing while looking fine."""
  if int(getattr(masker, 'num_masked', 1)) < 1:
    raise ValueError(f"config.mask (name {config.mask.name!r}, ratio {config.mask.get('ratio')}) hides no token, "
                     f"and {method}'s loss is on the hidden ones: it would be 0 at every step and nothing would "
                     'train. Set config.mask.ratio in (0, 1).')


def check_images(images: jax.Array, image_shape: tuple[int, int, int]) -> None:
  """Clear error for a batch whose image shape is not what the model was built for."""
  if images.ndim != 4 or tuple(images.shape[1:]) != tuple(image_shape):
    raise ValueError(f'expected images of shape [batch, {", ".join(map(str, image_shape))}] (NHWC), '
                     f'got {tuple(images.shape)}. Check data.image_size/channels against the model config '
                     '(images must be NHWC; transpose NCHW arrays with x.transpose(0, 2, 3, 1)).')
