"""Mask generators: a registry of pure functions of (rng, batch size) on a token grid.

Usage::

    gen = masking.build('random', grid=masking.Grid(14, 14), ratio=0.75)
    info = gen(rng, batch_size)          # MaskInfo(mask, ids_keep, ids_restore), static gen.len_keep

Each generator class is registered under a name with :func:`register`; ``python -m mim_jax.masking --list``
prints the names and ``--show NAME --out FILE.png`` draws sample masks.
"""

from mim_jax.masking.core import Grid, MaskInfo, mask_from_boolean, mask_from_scores, num_visible
from mim_jax.masking.random import RandomMask
from mim_jax.masking.registry import build, get, names, register

__all__ = [
    'Grid',
    'MaskInfo',
    'RandomMask',
    'build',
    'get',
    'mask_from_boolean',
    'mask_from_scores',
    'names',
    'num_visible',
    'register',
]
