"""Name -> mask generator class. Generators register themselves on import (found by discovery)."""

from __future__ import annotations

from typing import Any

from mim_jax.utils.registry import Registry

GENERATORS = Registry('mask generator', 'mim_jax.masking', skip=('core', 'registry', 'ops', '__main__'),
                      hint=' (python -m mim_jax.masking --list)')
register = GENERATORS.register
get = GENERATORS.get
names = GENERATORS.names


def build(name: str, grid, **kwargs: Any):
  """Instantiates generator ``name`` on ``grid`` with its keyword settings (e.g. ``ratio``)."""
  cls = get(name)
  try:
    return cls(grid=grid, **kwargs)
  except TypeError as e:
    raise ValueError(f'bad settings for mask generator {name!r}: {e}') from e
