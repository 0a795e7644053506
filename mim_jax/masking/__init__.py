"""Mask generators: a registry of pure functions of (rng, batch size) on a token grid.

Usage::

    gen = masking.build('random', grid=masking.Grid(14, 14), ratio=0.75)
    info = gen(rng, batch_size)          # MaskInfo(mask, ids_keep, ids_restore), static gen.len_keep

Each generator class is registered under a name with :func:`register`; ``python -m mim_jax.masking --list``
prints the names and ``--show NAME --out FILE.png`` draws sample masks. Generators: ``random`` (MAE),
``block`` (BEiT), ``coarse`` (SimMIM), ``colormae`` (ColorMAE filtered noise), ``gmml`` (GMML groups),
``grid`` (a regular lattice); on video token grids (``VideoGrid``) ``tube`` (VideoMAE) and ``running_cell``
(VideoMAE V2's decoder mask). docs/masking.md describes them.
"""

from mim_jax.masking.block import BlockMask
from mim_jax.masking.coarse import CoarseMask
from mim_jax.masking.colormae import ColorNoiseMask
from mim_jax.masking.core import Grid, MaskInfo, mask_from_boolean, mask_from_importance, mask_from_scores, num_visible
from mim_jax.masking.gmml import GroupMask
from mim_jax.masking.ops import exact_count, neighbour_agreement
from mim_jax.masking.random import RandomMask
from mim_jax.masking.registry import build, get, names, register
from mim_jax.masking.video import RunningCellMask, TubeMask, VideoGrid

__all__ = [
    'BlockMask',
    'CoarseMask',
    'ColorNoiseMask',
    'Grid',
    'GroupMask',
    'MaskInfo',
    'RandomMask',
    'RunningCellMask',
    'TubeMask',
    'VideoGrid',
    'build',
    'exact_count',
    'get',
    'mask_from_boolean',
    'mask_from_importance',
    'mask_from_scores',
    'names',
    'neighbour_agreement',
    'num_visible',
    'register',
]
