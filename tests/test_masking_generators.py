"""The mask contract and the distinguishing statistics of the structured generators.

Compilation dominates the run time on CPU, so every configuration is jitted once at one batch size and
its samples are cached for all the tests that look at them.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
import pytest
import scipy.ndimage

from mim_jax import masking
from mim_jax.masking import Grid
from mim_jax.masking.ops import neighbour_agreement

G14 = Grid(14, 14)
BATCH = 64

# id -> (name, grid, settings): the defaults of each generator, then settings that change code paths.
CONFIGS = {
    'block': ('block', G14, {}),
    'block-7x9': ('block', Grid(7, 9), {'ratio': 0.5, 'min_block': 4}),
    'coarse': ('coarse', G14, {}),
    'coarse-mae-0.75': ('coarse', G14, {'rounding': 'mae', 'ratio': 0.75}),
    'coarse-scale4': ('coarse', G14, {'scale': 4}),  # 14 is not a multiple of 4: cropped border cells
    'colormae-red': ('colormae', G14, {'color': 'red', 'bank_size': 64}),
    'colormae-blue': ('colormae', G14, {'color': 'blue', 'bank_size': 64}),
    'colormae-green': ('colormae', G14, {'color': 'green', 'bank_size': 64}),
    'colormae-purple': ('colormae', G14, {'color': 'purple', 'bank_size': 64, 'keep': 'low', 'flips': False}),
    'colormae-6x10': ('colormae', Grid(6, 10), {'bank_size': 16, 'ratio': 0.6}),
    'gmml': ('gmml', G14, {}),
    'gmml-ellipse': ('gmml', G14, {'shape': 'ellipse', 'ratio': 0.5, 'fill': 'random'}),
    'grid-7x7-random-offset': ('grid', Grid(7, 7), {'offset': 'random'}),  # the fixed lattice: test_grid_...
}


@functools.lru_cache(maxsize=None)
def build(cid: str):
  name, grid, settings = CONFIGS[cid]
  return masking.build(name, grid, **settings)


@functools.lru_cache(maxsize=None)
def jitted(cid: str):
  return jax.jit(build(cid), static_argnums=1)


@functools.lru_cache(maxsize=None)
def sample(cid: str, seed: int = 0) -> masking.MaskInfo:
  return jax.tree.map(np.asarray, jitted(cid)(jax.random.key(seed), BATCH))


def grid_of(cid: str) -> Grid:
  return CONFIGS[cid][1]


def agreement(cid: str) -> float:
  return float(neighbour_agreement(sample(cid).mask, grid_of(cid)).mean())


def shuffled_agreement(cid: str) -> float:
  """Baseline: the same masks with their tokens permuted at random (same count, no spatial structure)."""
  mask = np.random.default_rng(0).permuted(sample(cid).mask, axis=1)
  return float(neighbour_agreement(mask, grid_of(cid)).mean())


# ----------------------------------------------------------------------------------------------------------
# The contract.


@pytest.mark.parametrize('cid', CONFIGS)
def test_contract(cid):
  gen, grid = build(cid), grid_of(cid)
  n, k = grid.num_tokens, gen.len_keep
  assert isinstance(k, int) and 1 <= k < n
  info = sample(cid)
  # Shapes and dtypes.
  assert info.mask.shape == (BATCH, n) and info.mask.dtype == np.float32
  assert info.ids_keep.shape == (BATCH, k) and info.ids_keep.dtype == np.int32
  assert info.ids_restore.shape == (BATCH, n) and info.ids_restore.dtype == np.int32
  # Exact count in every row, values in {0, 1}.
  assert set(np.unique(info.mask)) <= {0.0, 1.0}
  np.testing.assert_array_equal(info.mask.sum(1), np.full(BATCH, n - k))
  # The kept tokens are exactly the visible ones.
  np.testing.assert_array_equal(np.take_along_axis(info.mask, info.ids_keep, axis=1), 0.0)
  # ids_restore is a permutation that undoes [visible, masked].
  np.testing.assert_array_equal(np.sort(info.ids_restore, axis=1), np.broadcast_to(np.arange(n), (BATCH, n)))
  ids_shuffle = np.argsort(info.ids_restore, axis=1)
  np.testing.assert_array_equal(ids_shuffle[:, :k], info.ids_keep)
  assert (np.take_along_axis(info.mask, ids_shuffle[:, k:], axis=1) == 1).all()
  x = np.broadcast_to(np.arange(n) * 10 + 3, (BATCH, n))
  visible = np.take_along_axis(x, info.ids_keep, axis=1)
  hidden = np.take_along_axis(x, ids_shuffle[:, k:], axis=1)
  restored = np.take_along_axis(np.concatenate([visible, hidden], axis=1), info.ids_restore, axis=1)
  np.testing.assert_array_equal(restored, x)
  # The examples of a batch are drawn independently.
  assert len({row.tobytes() for row in info.mask}) > BATCH // 2


@pytest.mark.parametrize('cid', CONFIGS)
def test_deterministic_given_rng(cid):
  again = jax.tree.map(np.asarray, jitted(cid)(jax.random.key(0), BATCH))
  np.testing.assert_array_equal(again.mask, sample(cid).mask)
  np.testing.assert_array_equal(again.ids_keep, sample(cid).ids_keep)
  np.testing.assert_array_equal(again.ids_restore, sample(cid).ids_restore)
  assert not np.array_equal(sample(cid, 1).mask, sample(cid).mask)


def test_jit_matches_eager_with_raw_keys():
  # The loops (fori_loop under vmap) run un-jitted too, with an old-style uint32 key: same bits, same masks.
  eager = build('block-7x9')(jax.random.PRNGKey(0), BATCH)
  np.testing.assert_array_equal(np.asarray(eager.mask), sample('block-7x9').mask)
  np.testing.assert_array_equal(np.asarray(eager.ids_restore), sample('block-7x9').ids_restore)


def test_registry_and_bad_settings():
  assert {'block', 'coarse', 'colormae', 'gmml', 'random'} <= set(masking.names())
  with pytest.raises(ValueError, match='bad settings'):
    masking.build('block', G14, nonsense=1)
  with pytest.raises(ValueError, match='color'):
    masking.build('colormae', G14, color='pink')
  with pytest.raises(ValueError, match='sigma1 < sigma2'):
    masking.build('colormae', G14, sigma1=2.0, sigma2=1.0)
  with pytest.raises(ValueError, match='multiple of token_patch_size'):
    masking.build('coarse', G14, mask_patch_size=24)
  with pytest.raises(ValueError, match='pattern_size'):
    masking.build('colormae', G14, pattern_size=8)
  with pytest.raises(ValueError, match='no visible token'):
    masking.build('gmml', Grid(2, 2), ratio=0.9)
  with pytest.raises(ValueError, match='fill'):
    masking.build('block', G14, fill='nearest')


def test_generators_are_hashable_values():
  # jit(gen) and configs rely on generators being hashable, comparable values (the noise bank excluded).
  a = masking.build('colormae', G14, bank_size=8)
  b = masking.build('colormae', G14, bank_size=8)
  assert a == b and hash(a) == hash(b)
  np.testing.assert_array_equal(a.bank, b.bank)
  assert a.bank.shape == (8, 28, 28) and not a.bank.flags.writeable


# ----------------------------------------------------------------------------------------------------------
# Statistics that tell the generators apart. Neighbour agreement = fraction of 4-neighbour token pairs with
# equal mask values. The baseline is the same masks with their tokens shuffled (same count, no structure);
# i.i.d. masking at ratio r gives about r**2 + (1 - r)**2 (0.625 at 0.75, 0.52 at 0.4). Measured values are
# quoted in docs/masking.md; the margins below are several standard errors wide.


def test_colormae_colours_order_by_smoothness():
  rand = shuffled_agreement('colormae-green')
  assert abs(rand - 0.625) < 0.02
  red, green = agreement('colormae-red'), agreement('colormae-green')
  blue, purple = agreement('colormae-blue'), agreement('colormae-purple')
  assert red > rand + 0.15  # low-pass: large blobs
  assert blue < rand - 0.03  # high-pass: visible tokens spread apart, fewer equal neighbours than random
  assert rand + 0.03 < green < red - 0.1  # band-pass: small clusters
  assert purple < rand  # band-stop: the high-pass part dominates the variance at these widths


def _band_power(bank: np.ndarray) -> np.ndarray:
  """Mean power of the patterns in three radial frequency bands (low, mid, high)."""
  p = bank.shape[-1]
  power = (np.abs(np.fft.fft2(bank)) ** 2).mean(0)
  f = np.hypot(*np.meshgrid(np.fft.fftfreq(p), np.fft.fftfreq(p), indexing='ij'))
  bands = [(0.0, 0.08), (0.12, 0.22), (0.35, 0.71)]
  return np.array([power[(f > lo) & (f <= hi)].mean() for lo, hi in bands])


def test_colormae_bank_spectra_match_the_filter_types():
  low, mid, high = {}, {}, {}
  for color in ('red', 'blue', 'green', 'purple'):
    gen = masking.build('colormae', G14, color=color, bank_size=128)
    bank = gen.bank
    np.testing.assert_allclose(bank.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(bank.std(axis=(1, 2)), 1.0, atol=1e-4)
    low[color], mid[color], high[color] = _band_power(bank)
  assert low['red'] > 10 * high['red']  # low-pass
  assert high['blue'] > 10 * low['blue']  # high-pass
  assert mid['green'] > 3 * low['green'] and mid['green'] > 3 * high['green']  # band-pass
  assert mid['purple'] < 0.7 * high['purple'] and mid['purple'] < low['purple']  # band-stop


def test_colormae_bank_is_built_once_and_seeded():
  a = masking.build('colormae', G14, bank_size=4, bank_seed=1)
  b = masking.build('colormae', G14, bank_size=4, bank_seed=2)
  assert not np.array_equal(a.bank, b.bank)
  np.testing.assert_array_equal(a.bank, masking.build('colormae', G14, bank_size=4, bank_seed=1).bank)


@pytest.mark.parametrize('cid', ['colormae-green', 'colormae-purple'])
def test_colormae_keeps_the_strongest_noise_by_default(cid):
  # keep='high' (default, the official code): every visible token's noise >= every masked token's noise;
  # keep='low' (the purple config): the reverse.
  gen = build(cid)
  noise = np.asarray(jax.jit(gen.noise, static_argnums=1)(jax.random.key(0), BATCH))
  mask = sample(cid).mask
  vis_min = np.where(mask == 0, noise, np.inf).min(1)
  vis_max = np.where(mask == 0, noise, -np.inf).max(1)
  hid_min = np.where(mask == 1, noise, np.inf).min(1)
  hid_max = np.where(mask == 1, noise, -np.inf).max(1)
  if gen.keep == 'high':
    assert (vis_min >= hid_max).all()
  else:
    assert (vis_max <= hid_min).all()


def test_colormae_windows_come_from_the_bank():
  # Every window is a (wrap-around, possibly flipped) 6x10 crop of one of the precomputed patterns.
  gen = build('colormae-6x10')
  bank = gen.bank
  p = bank.shape[-1]
  crops = np.lib.stride_tricks.sliding_window_view(np.tile(bank, (1, 2, 2)), (6, 10), axis=(1, 2))[:, :p, :p]
  for win in np.asarray(jax.jit(gen.noise, static_argnums=1)(jax.random.key(0), 4)).reshape(4, 6, 10):
    variants = [win, win[::-1], win[:, ::-1], win[::-1, ::-1]]
    assert any((crops == v).all(axis=(-2, -1)).any() for v in variants)
  # Flips off and a single pattern: the windows are plain crops of that pattern.
  one = masking.build('colormae', Grid(6, 10), bank_size=1, flips=False)
  crops = np.lib.stride_tricks.sliding_window_view(np.tile(one.bank[0], (2, 2)), (6, 10))[:p, :p]
  for win in np.asarray(jax.jit(one.noise, static_argnums=1)(jax.random.key(1), 4)).reshape(4, 6, 10):
    assert (crops == win).all(axis=(-2, -1)).any()


def test_block_masks_are_rectangles_and_smooth():
  gen = build('block')
  raw, rects = jax.tree.map(np.asarray, jax.jit(gen.rectangles, static_argnums=1)(jax.random.key(0), BATCH))
  final = sample('block').mask.astype(bool)
  h, w = 14, 14
  for mask, attempts in zip(raw, rects):
    union = np.zeros((h, w), bool)
    for top, left, bh, bw, accepted in attempts:
      if accepted:
        assert 1 <= bh < h and 1 <= bw < w and 0 <= top <= h - bh and 0 <= left <= w - bw
        union[top:top + bh, left:left + bw] = True
    np.testing.assert_array_equal(mask.reshape(h, w), union)  # the mask is exactly a union of rectangles
    areas = [bh * bw for _, _, bh, bw, ok in attempts if ok]
    assert areas[0] >= 14  # the first block is drawn with area >= 16 (rounding of the sides can lose a bit)
    assert mask.sum() <= gen.num_masked
  # Only a top-up happens after the rectangles: every rectangle token stays masked, and the deficit is small.
  assert (final >= raw).all()
  assert (final.sum(1) - raw.sum(1)).mean() < 1.0  # measured: ~0.04 tokens
  assert agreement('block') > shuffled_agreement('block') + 0.25  # measured ~0.89 vs ~0.52


def _cells(mask: np.ndarray, grid: Grid, s: int) -> np.ndarray:
  """``[B, cells, s*s]`` token values per coarse cell (grid divisible by s)."""
  m = mask.reshape(-1, grid.height // s, s, grid.width // s, s)
  return m.transpose(0, 1, 3, 2, 4).reshape(m.shape[0], -1, s * s)


def test_coarse_is_constant_within_cells():
  gen = build('coarse')
  assert gen.cell_size == 2 and gen.coarse_grid == Grid(7, 7)
  assert gen.num_masked == math.ceil(49 * 0.6) * 4 == 120  # SimMIM: ceil(cells * ratio) whole cells
  cells = _cells(sample('coarse').mask, G14, 2)
  assert (cells.min(-1) == cells.max(-1)).all()
  assert agreement('coarse') > shuffled_agreement('coarse') + 0.1  # measured ~0.73 vs ~0.53


@pytest.mark.parametrize('cid', ['coarse-mae-0.75', 'coarse-scale4'])
def test_coarse_has_at_most_one_partial_cell(cid):
  gen = build(cid)
  mask = sample(cid).mask
  idx = gen.cell_index()
  for row in mask:
    partial = [c for c in np.unique(idx) if 0 < row[idx == c].sum() < (idx == c).sum()]
    assert len(partial) <= 1
  if cid == 'coarse-mae-0.75':
    assert gen.len_keep == masking.num_visible(196, 0.75) == 49  # 147 masked = 36 cells + 3 tokens


def components(mask: np.ndarray, grid: Grid) -> float:
  """Mean number of 4-connected components of masked tokens."""
  return float(np.mean([scipy.ndimage.label(m.reshape(grid.height, grid.width))[1] for m in mask.astype(bool)]))


@pytest.mark.parametrize('cid', ['gmml', 'gmml-ellipse'])
def test_gmml_masks_few_connected_groups(cid):
  grid = grid_of(cid)
  mask = sample(cid).mask
  shuffled = np.random.default_rng(0).permuted(mask, axis=1)
  # The same number of tokens masked at random scatters into many pieces (~10 on 14x14 at 0.6); GMML's
  # groups merge into a few (~3).
  assert components(mask, grid) < 0.6 * components(shuffled, grid)
  assert agreement(cid) > shuffled_agreement(cid) + 0.1  # measured ~0.75 vs ~0.52 for the 14x14 default


def test_grid_keeps_the_lattice():
  fixed = jax.jit(masking.build('grid', G14), static_argnums=1)(jax.random.key(0), BATCH)
  kept = 1 - np.asarray(fixed.mask).reshape(BATCH, 14, 14)
  lattice = np.zeros((14, 14))
  lattice[::2, ::2] = 1
  assert (kept == lattice).all()  # 75% of 14x14: exactly every other row and column, the same for every image
  odd = 1 - sample('grid-7x7-random-offset').mask.reshape(BATCH, 7, 7)
  assert (odd.sum((1, 2)) == 12).all()  # int(49 x 0.25) kept: 12 of a lattice of up to 16
  corner = [tuple(np.argwhere(k)[0] % 2) for k in odd]
  assert len(set(corner)) > 1  # the random offset moves the lattice
