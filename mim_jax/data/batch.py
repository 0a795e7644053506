"""The shape of a batch, declared by whoever consumes it: named arrays with per-example shapes and dtypes.

A method declares the fields of its train and eval batches (``image``; ``view1``/``view2``; ``video``
``[T, H, W, C]``; ``points`` ``[N, 3]``; ``rgb``/``depth``/``semseg``; ``label``) and the per-record host
transform that makes them. The pipeline stacks every field; *pixel* fields leave the host as uint8 and are
normalized with their own statistics (``mean``/``std``, the dataset's when None), on the host or on the device;
the AOT fit check and the step report use the declared shapes.

Kept free of jax: grain worker processes import this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class Field:
  """One named array of an example (no batch axis), as the model receives it."""

  shape: tuple[int, ...]
  dtype: str = 'float32'  # after on-device preprocessing (pixel fields: float32, normalized)
  pixels: bool = False  # uint8 pixels [..., C] from the host transform, normalized with mean/std
  mean: tuple[float, ...] | None = None  # per channel, 0-1 pixel scale; None: the dataset's statistics
  std: tuple[float, ...] | None = None

  def __post_init__(self):
    object.__setattr__(self, 'shape', tuple(int(d) for d in self.shape))
    np.dtype(self.dtype)  # a clear numpy error for a misspelt dtype, at declaration
    if (self.mean is None) != (self.std is None):
      raise ValueError(f'a pixel field needs both mean and std or neither, got mean={self.mean}, std={self.std}.')


Fields = Mapping[str, Field]


def image_fields(image_shape: tuple[int, int, int]) -> dict[str, Field]:
  """The single-image batch: ``image`` [H, W, C] pixels and the class ``label`` (-1 for unlabelled data)."""
  return {'image': Field(tuple(image_shape), 'float32', pixels=True), 'label': Field((), 'int32')}


def zeros(fields: Fields, batch_size: int) -> dict[str, np.ndarray]:
  """An all-zero batch of the declared shapes and model dtypes (what methods are initialised from)."""
  return {k: np.zeros((batch_size, *f.shape), f.dtype) for k, f in fields.items()}


def pixel_stats(fields: Fields, mean, std) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
  """``{key: (mean, std)}`` of every pixel field: its own statistics, else the dataset's (``mean``, ``std``)."""
  out = {}
  for key, f in fields.items():
    if f.pixels:
      m, s = (f.mean, f.std) if f.mean is not None else (mean, std)
      out[key] = (tuple(float(v) for v in m), tuple(float(v) for v in s))
  return out


def check_batch(batch: Mapping[str, np.ndarray], fields: Fields, where: str) -> None:
  """A one-line error when a host batch lacks a declared field or has another per-example shape."""
  for key, f in fields.items():
    if key not in batch:
      raise ValueError(f'{where}: the batch has no {key!r} (it has {sorted(batch)}); the record transform must '
                       f'produce every declared field.')
    got = tuple(np.shape(batch[key])[1:])
    if got != f.shape:
      raise ValueError(f'{where}: batch[{key!r}] has per-example shape {got}, but the method declares {f.shape}.')
