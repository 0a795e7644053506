"""MultiMAE's token budget across modalities (Bachmann et al., ECCV 2022; official ``generate_random_masks`` in
EPFL-VILAB/MultiMAE ``multimae/multimae.py``).

Per sample: modality shares ``lambda ~ Dirichlet(alpha)`` (with ``sample_tasks_uniformly``, first a uniformly drawn
non-empty subset of the modalities, then a Dirichlet over it: the others get ``alpha = 1e-5``); each modality gets
``round(lambda_m * K)`` visible tokens (round half to even, as ``torch.round``), uniformly placed within it; then the
official rounding repair: the concatenated mask plus uniform noise is sorted and exactly the first ``K`` tokens are
kept, so the total is always ``K`` while each modality's count moves by at most the rounding. Masks are 1 = hidden.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.masking.core import MaskInfo


def dirichlet_budget(rng: jax.Array, batch_size: int, tokens_per_modality: tuple[int, ...], num_visible: int,
                     alpha: float | tuple[float, ...] = 1.0, sample_tasks_uniformly: bool = False) -> MaskInfo:
  """A joint :class:`MaskInfo` over the concatenated modalities' tokens (``ids_keep`` ``[B, num_visible]``)."""
  total = int(sum(tokens_per_modality))
  if not 0 < num_visible <= total:
    raise ValueError(f'num_visible must be in [1, {total}] (the tokens of all modalities), got {num_visible}.')
  m = len(tokens_per_modality)
  alphas = jnp.broadcast_to(jnp.asarray(alpha, jnp.float32), (m,))
  k_task, k_dir, k_place, k_repair = jax.random.split(rng, 4)
  if sample_tasks_uniformly:
    choices = jnp.asarray(np.array(list(itertools.product([0, 1], repeat=m))[1:], np.float32))
    pick = jax.random.randint(k_task, (batch_size,), 0, len(choices))
    alphas = choices[pick] * alphas + 1e-5
  else:
    alphas = jnp.broadcast_to(alphas, (batch_size, m))
  shares = jax.random.dirichlet(k_dir, alphas)  # [B, M]
  counts = jnp.round(shares * num_visible).astype(jnp.int32)
  masks = []
  for i, (n, key) in enumerate(zip(tokens_per_modality, jax.random.split(k_place, m))):
    rank = jnp.argsort(jnp.argsort(jax.random.uniform(key, (batch_size, n)), axis=1), axis=1)
    masks.append((rank >= counts[:, i:i + 1]).astype(jnp.float32))  # a random `count` of them visible
  mask = jnp.concatenate(masks, axis=1)
  ids_shuffle = jnp.argsort(mask + jax.random.uniform(k_repair, mask.shape), axis=1).astype(jnp.int32)
  ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
  final = (ids_restore >= num_visible).astype(jnp.float32)
  return MaskInfo(final, ids_shuffle[:, :num_visible], ids_restore)


def split_mask(mask: jax.Array, tokens_per_modality: tuple[int, ...]) -> list[jax.Array]:
  """The joint ``[B, N]`` mask as one ``[B, N_m]`` mask per modality."""
  return jnp.split(mask, np.cumsum(tokens_per_modality)[:-1].tolist(), axis=1)
