"""The mask contract shared by every generator and every method.

A mask over a grid of N tokens is described by three arrays (``MaskInfo``):

* ``mask``        float32 ``[B, N]``: 1 where a token is masked (hidden), 0 where it is visible.
* ``ids_keep``    int32 ``[B, K]``: indices of the K visible tokens, in the order a visible-only
                  (MAE-style) encoder receives them.
* ``ids_restore`` int32 ``[B, N]``: the permutation that puts ``[visible tokens, masked tokens]``
                  back into the original raster order (``take_along_axis(x_shuffled, ids_restore)``).

Every generator reduces to one primitive, :func:`mask_from_scores`: a per-token score, where the K
*smallest* scores are kept. This is exactly the MAE reference (``argsort(noise)`` ascending, keep the
first ``len_keep``), so a generator that is given the reference's noise reproduces its masks token for
token; structured generators (blocks, coloured noise, learned difficulty) just produce other scores.
K is a Python int fixed by the config, so every step compiles once.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class MaskInfo:
  mask: jax.Array  # [B, N] float32, 1 = masked
  ids_keep: jax.Array  # [B, K] int32
  ids_restore: jax.Array  # [B, N] int32

  @property
  def len_keep(self) -> int:
    return self.ids_keep.shape[1]

  @property
  def ids_masked(self) -> jax.Array:
    """int32 ``[B, N - K]``: the raster indices of the masked tokens (the inverse of ``ids_restore``, past the
    visible ones; in the generator's shuffled order, not raster order)."""
    ids_shuffle = jnp.argsort(self.ids_restore, axis=1).astype(jnp.int32)
    return ids_shuffle[:, self.len_keep:]


def num_visible(num_tokens: int, mask_ratio: float) -> int:
  """Visible-token count exactly as the MAE reference computes it: ``int(N * (1 - ratio))``.

  Python float64 arithmetic and truncation (``int(3.5999...) == 3``) are deliberate: they are what the
  reference does, and parity tests depend on it.
  """
  if not 0.0 <= mask_ratio < 1.0:
    raise ValueError(f'mask_ratio must be in [0, 1), got {mask_ratio}.')
  k = int(num_tokens * (1 - mask_ratio))
  if k < 1:
    raise ValueError(
        f'mask_ratio={mask_ratio} leaves no visible token out of {num_tokens}; lower the ratio.')
  return k


def mask_from_scores(scores: jax.Array, len_keep: int) -> MaskInfo:
  """Keeps the ``len_keep`` tokens with the smallest score (stable ascending argsort)."""
  if scores.ndim != 2:
    raise ValueError(f'scores must be [batch, tokens], got shape {scores.shape}.')
  n = scores.shape[1]
  ids_shuffle = jnp.argsort(scores, axis=1, stable=True).astype(jnp.int32)
  ids_restore = jnp.argsort(ids_shuffle, axis=1, stable=True).astype(jnp.int32)
  ids_keep = ids_shuffle[:, :len_keep]
  shuffled = (jnp.arange(n) >= len_keep).astype(jnp.float32)
  mask = jnp.take_along_axis(jnp.broadcast_to(shuffled, scores.shape), ids_restore, axis=1)
  return MaskInfo(mask=mask, ids_keep=ids_keep, ids_restore=ids_restore)


def mask_from_importance(rng: jax.Array, importance: jax.Array, len_keep: int) -> MaskInfo:
  """Keeps ``len_keep`` tokens drawn without replacement with probability proportional to ``importance``
  ``[B, N]`` (non-negative; e.g. a teacher's CLS attention), in draw order: the first kept token is drawn from
  ``importance / sum``, the next from the rest renormalized, and so on (``torch.multinomial(importance, N,
  replacement=False)[:, :len_keep]``, MaskAlign's attention keep).

  The Gumbel-top-k trick gives that distribution in one sort: the ``len_keep`` largest ``log(importance) + G``,
  ``G`` i.i.d. standard Gumbel, are such a sequential draw. It is equal in distribution to torch's sampler, not draw
  for draw (tests compare the inclusion frequencies with the exact probabilities). A zero importance counts as the
  smallest positive float: such tokens come after every token with a real weight (to float precision)."""
  if importance.ndim != 2:
    raise ValueError(f'importance must be [batch, tokens], got shape {importance.shape}.')
  logits = jnp.log(jnp.maximum(importance.astype(jnp.float32), jnp.finfo(jnp.float32).tiny))
  perturbed = logits + jax.random.gumbel(rng, importance.shape, jnp.float32)
  return mask_from_scores(-perturbed, len_keep)


def mask_from_boolean(masked: jax.Array, len_keep: int) -> MaskInfo:
  """Turns a boolean ``[B, N]`` mask (True = masked) with exactly ``N - len_keep`` masked tokens per row
  into a :class:`MaskInfo`; visible tokens keep raster order."""
  return mask_from_scores(masked.astype(jnp.float32), len_keep)


class RatioCounts:
  """Mixin for generators with a ``grid`` and a ``ratio``: the reference's static visible/masked counts."""

  @property
  def len_keep(self) -> int:
    return num_visible(self.grid.num_tokens, self.ratio)

  @property
  def num_masked(self) -> int:
    return self.grid.num_tokens - self.len_keep


@dataclasses.dataclass(frozen=True)
class Grid:
  """Token grid of an image: ``height x width`` tokens."""

  height: int
  width: int

  @property
  def num_tokens(self) -> int:
    return self.height * self.width
