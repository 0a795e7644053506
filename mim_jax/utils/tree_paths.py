"""Helpers for pytree key paths ('encoder/blocks_0/attn/qkv/kernel')."""

from __future__ import annotations

import jax


def key_name(key) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_str(path) -> str:
  return '/'.join(key_name(k) for k in path)


def flatten_with_names(tree) -> list[tuple[str, jax.Array]]:
  return [(path_str(p), v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]]
