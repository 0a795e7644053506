"""Layer-wise learning-rate decay for fine-tuning a ViT (BEiT / MAE reference definition).

With ``depth`` transformer blocks the reference counts ``num_layers = depth + 1`` and assigns

* ``layer_id = 0`` to the embeddings: ``patch_embed``, ``cls_token``, ``mask_token``, ``pos_embed*``;
* ``layer_id = i + 1`` to everything inside ``blocks_{i}``;
* ``layer_id = num_layers = depth + 1`` to everything else (final ``norm``, ``fc_norm``, ``head``, ...);

and scales the learning rate of a parameter by ``decay ** (num_layers - layer_id)``: the head trains at the
full rate, block ``depth - 1`` at ``decay``, ..., the embeddings at ``decay ** (depth + 1)``.

A parameter's path is read from its dict keys, so the encoder may sit under any prefix
(``encoder/blocks_3/...``) and boxed (logically partitioned) params work too. Scaling the final optimizer
update by the multiplier (see :func:`scale_by_multipliers`) is the same as scaling the learning rate,
decoupled weight decay included.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import optax

_BLOCK = re.compile(r'^blocks_(\d+)$')
_EMBEDDING_NAMES = ('patch_embed', 'cls_token', 'mask_token')


def _key_name(entry) -> str | None:
  if isinstance(entry, jax.tree_util.DictKey):
    return str(entry.key)
  if isinstance(entry, jax.tree_util.GetAttrKey):
    return entry.name
  return None


def layer_id(names: Sequence[str], depth: int) -> int:
  """The layer id of a parameter given the names along its path (outermost first)."""
  for name in names:
    if name in _EMBEDDING_NAMES or name.startswith('pos_embed'):
      return 0
    match = _BLOCK.match(name)
    if match:
      i = int(match.group(1))
      if i >= depth:
        raise ValueError(f'parameter under {name!r} but the model has depth {depth}')
      return i + 1
  return depth + 1


def layer_decay_multipliers(params, depth: int, decay: float):
  """A pytree like ``params`` whose leaves are the lr multipliers ``decay ** (depth + 1 - layer_id)``."""

  def multiplier(path, _):
    names = [n for n in map(_key_name, path) if n is not None]
    return float(decay ** (depth + 1 - layer_id(names, depth)))

  return jax.tree_util.tree_map_with_path(multiplier, params)


def scale_by_multipliers(multipliers) -> optax.GradientTransformation:
  """Multiply each update leaf by its multiplier; chain it last to give per-parameter learning rates."""

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u * m, updates, multipliers), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
