"""Name -> mask generator class. Generators register themselves on import."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_REGISTRY: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
  def wrap(cls: type) -> type:
    if name in _REGISTRY:
      raise ValueError(f'mask generator {name!r} registered twice')
    cls.name = name
    _REGISTRY[name] = cls
    return cls
  return wrap


def _load_all() -> None:
  # Import every generator module so that its @register runs. Kept lazy to avoid import cycles.
  import importlib
  import pkgutil

  import mim_jax.masking as pkg
  for info in pkgutil.iter_modules(pkg.__path__):
    if info.name not in ('core', 'registry', '__main__'):
      importlib.import_module(f'mim_jax.masking.{info.name}')


def names() -> list[str]:
  _load_all()
  return sorted(_REGISTRY)


def get(name: str) -> type:
  _load_all()
  if name not in _REGISTRY:
    raise ValueError(f'unknown mask generator {name!r}; choose one of {sorted(_REGISTRY)} '
                     '(python -m mim_jax.masking --list).')
  return _REGISTRY[name]


def build(name: str, grid, **kwargs: Any):
  """Instantiates generator ``name`` on ``grid`` with its keyword settings (e.g. ``ratio``)."""
  cls = get(name)
  try:
    return cls(grid=grid, **kwargs)
  except TypeError as e:
    raise ValueError(f'bad settings for mask generator {name!r}: {e}') from e
