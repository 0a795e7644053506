"""Online monitors during pre-training, configured by a dict like big_vision's evaluators.

``config.monitors`` maps a name to a block with at least ``kind`` and ``every_steps``; :func:`build` turns it
into callables ``monitor(step, params) -> dict[str, float]`` that the train loop runs every ``every_steps``
and writes to metrics.jsonl / TensorBoard under ``monitor/<name>/...``.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import ml_collections


class Monitor(Protocol):
  name: str
  every_steps: int

  def __call__(self, step: int, params: Any) -> dict[str, float]:
    ...


_KINDS: dict[str, Callable[..., Monitor]] = {}


def register(kind: str):
  def wrap(factory):
    _KINDS[kind] = factory
    return factory
  return wrap


def build(monitors_cfg: ml_collections.ConfigDict | None, *, method, config, workdir: str) -> list[Monitor]:
  """Instantiates every configured monitor; an empty or missing block gives no monitors."""
  out = []
  for name, cfg in (monitors_cfg or {}).items():
    kind = cfg.get('kind', name)
    if kind not in _KINDS:
      raise ValueError(f'config.monitors.{name}: unknown kind {kind!r}; available: {sorted(_KINDS)}.')
    out.append(_KINDS[kind](name=name, cfg=cfg, method=method, config=config, workdir=workdir))
  return out
