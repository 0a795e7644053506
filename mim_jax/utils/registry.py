"""Name -> class registries filled by discovery: every module of a package is imported on first lookup, so a new
method, encoder or mask generator is one file that registers itself (nothing lists them by hand).

  METHODS = Registry('method', 'mim_jax.methods', skip=('base',))

  @METHODS.register('mae')
  class MAE(Method): ...

  METHODS.get('mae'), METHODS.names()

Registering a name twice is an error (two files claiming one config name would otherwise shadow each other
depending on import order). Classes defined outside the package (tests, a user's own module) register the same
way; they are found once their module has been imported.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any


class Registry:
  """Classes by name, for one kind of part (``kind`` names it in error messages)."""

  def __init__(self, kind: str, package: str | None = None, skip: tuple[str, ...] = (), hint: str = ''):
    self.kind = kind
    self.package = package
    self.skip = tuple(skip)
    self.hint = hint  # appended to the unknown-name error, e.g. how to list the names
    self._entries: dict[str, Any] = {}
    self._loaded = False

  def register(self, name: str) -> Callable[[Any], Any]:
    """Class decorator: registers the class under ``name`` and sets its ``name`` attribute."""

    def wrap(cls):
      if name in self._entries and self._entries[name] is not cls:
        raise ValueError(f'{self.kind} {name!r} is registered twice ({_where(self._entries[name])} and '
                         f'{_where(cls)}); give one of them another name.')
      cls.name = name
      self._entries[name] = cls
      return cls

    return wrap

  def discover(self) -> None:
    """Imports every module of the package once (each registers what it defines); nothing without a package
    (a registry whose entries live in one module)."""
    if self._loaded or self.package is None:
      return
    self._loaded = True
    package = importlib.import_module(self.package)
    for info in pkgutil.iter_modules(package.__path__):
      if info.name not in self.skip and not info.name.startswith('_'):
        importlib.import_module(f'{self.package}.{info.name}')

  def names(self) -> list[str]:
    self.discover()
    return sorted(self._entries)

  def get(self, name: str):
    self.discover()
    if name not in self._entries:
      raise ValueError(f'unknown {self.kind} {name!r}; registered: {sorted(self._entries)}{self.hint}.')
    return self._entries[name]

  def __contains__(self, name: str) -> bool:
    self.discover()
    return name in self._entries

  def items(self):
    self.discover()
    return sorted(self._entries.items())


def _where(cls) -> str:
  return f'{getattr(cls, "__module__", "?")}.{getattr(cls, "__qualname__", cls)}'
