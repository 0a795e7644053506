"""What a pre-training method is, for the trainer and the evaluators.

A method = mask generator x encoder x target x decoder/head x loss. The trainer only needs:

* ``init(rng, images) -> (params, extras)``: trainable parameters and non-trainable method state
  (EMA teachers, loss predictors' schedules, ...; ``{}`` when there is none). Both live in the train state.
* ``loss_fn(params, extras, batch, rng, step) -> (loss, (metrics, new_extras))``: pure and jit-able.
* ``encode(params, images) -> dict(cls, patch_tokens, pooled)``: the frozen encoder without masking, for
  probes, kNN and feature export.
* ``encoder_params(params)`` / ``encoder_module()``: the encoder alone (fine-tuning, interop).
* optionally ``reconstruct(params, images, rng) -> dict(pred_images, mask)`` for figures.

A new method is one small file that subclasses :class:`Method` and registers itself by name.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

_METHODS: dict[str, type[Method]] = {}


def register(name: str) -> Callable[[type], type]:
  def wrap(cls):
    _METHODS[name] = cls
    cls.name = name
    return cls
  return wrap


def build(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int]) -> Method:
  import mim_jax.methods  # noqa: F401  (registers the built-in methods)
  name = config.method
  if name not in _METHODS:
    raise ValueError(f'unknown method {name!r}; choose one of {sorted(_METHODS)}.')
  return _METHODS[name](config, image_shape)


def method_names() -> list[str]:
  import mim_jax.methods  # noqa: F401
  return sorted(_METHODS)


class Method(abc.ABC):
  name: str = ''

  def __init__(self, config: ml_collections.ConfigDict, image_shape: tuple[int, int, int]):
    self.config = config
    self.image_shape = tuple(image_shape)

  @abc.abstractmethod
  def init(self, rng: jax.Array, images: jax.Array) -> tuple[Any, Any]:
    ...

  @abc.abstractmethod
  def loss_fn(self, params, extras, batch, rng, step) -> tuple[jax.Array, tuple[dict, Any]]:
    ...

  @abc.abstractmethod
  def encoder_module(self):
    ...

  def encoder_params(self, params):
    return params['encoder']

  def encode(self, params, images: jax.Array) -> dict[str, jax.Array]:
    tokens = self.encoder_module().apply({'params': self.encoder_params(params)}, images)
    return {'cls': tokens[:, 0], 'patch_tokens': tokens[:, 1:], 'pooled': tokens[:, 1:].mean(axis=1)}

  def reconstruct(self, params, images, rng) -> dict[str, jax.Array]:
    raise NotImplementedError(f'method {self.name!r} does not reconstruct pixels.')


def check_images(images: jax.Array, image_shape: tuple[int, int, int]) -> None:
  """Clear error for a batch whose image shape is not what the model was built for."""
  if images.ndim != 4 or tuple(images.shape[1:]) != tuple(image_shape):
    raise ValueError(f'expected images of shape [batch, {", ".join(map(str, image_shape))}] (NHWC), '
                     f'got {tuple(images.shape)}. Check data.image_size/channels against the model config '
                     '(images must be NHWC; transpose NCHW arrays with x.transpose(0, 2, 3, 1)).')


def as_float(x) -> jax.Array:
  return jnp.asarray(x, jnp.float32)
