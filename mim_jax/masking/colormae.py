"""ColorMAE (Hinojosa, Liu, Ghanem, ECCV 2024): data-independent masks from filtered ("coloured") noise.

What the paper and the authors' code (github.com/carlosh93/ColorMAE, ``models/utils/masking_generator.py``)
establish, and what this module does with it:

* Noise. White noise ``W`` filtered with Gaussian kernels ``G_s`` (paper, Sec. 3):
  red ``G_s * W`` (low-pass), blue ``W - G_s * W`` (high-pass), green ``G_s1 * W - G_s2 * W`` with
  ``s1 < s2`` (band-pass), purple ``W - (G_s1 * W - G_s2 * W)`` (band-stop). We filter in the Fourier
  domain, i.e. with periodic boundaries, so each pattern tiles seamlessly, and normalise every pattern to
  zero mean and unit variance.
* Bank. The authors pre-generate the patterns offline (a file of 3072 patterns per colour, kept in GPU
  memory) and at every step take a random 14x14 window (``RandomCrop``) with random horizontal and
  vertical flips. We build the bank once at construction (numpy, seeded by ``bank_seed``) and keep it as a
  constant; per example we draw a pattern, a random (wrap-around) window offset and two flips, so a step
  costs a gather.
* Noise -> mask. The official code sorts the window in *descending* order and keeps the ``len_keep``
  tokens with the *strongest* noise ("keep stronger values from color noise pattern"), masking the rest;
  that is ``keep='high'`` here (the default). Some secondary write-ups describe the opposite convention
  (mask the largest values); ``keep='low'`` gives it. Filtered Gaussian noise is symmetric, so both yield
  the same distribution of masks.

Not pinned down by the sources we could read, so chosen here and documented in docs/masking.md: the
filter widths (``sigma1``, ``sigma2``, in token units), the pattern size (``pattern_size``),
Gaussian rather than uniform white noise, and the per-example (rather than per-batch) draw of the crop
and flips (the official code draws one crop and one flip per batch and assigns patterns to examples in
bank order).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.masking.core import RatioCounts, Grid, MaskInfo, mask_from_scores
from mim_jax.masking.registry import register

COLORS = ('red', 'blue', 'green', 'purple')
# Default filter widths in token units (see docs/masking.md: not given in the sources we could read).
# One pair of band edges serves all four colours, so that red + green + blue split the spectrum and
# purple = red + blue: sigma1 (weak blur) for blue/green/purple, sigma2 (strong blur) for red/green/purple.
DEFAULT_SIGMA1 = 0.5
DEFAULT_SIGMA2 = 2.0


def gaussian_response(size: tuple[int, int], sigma: float) -> np.ndarray:
  """Frequency response of a periodic Gaussian blur with std ``sigma`` (samples) on a ``size`` grid."""
  fy = np.fft.fftfreq(size[0])[:, None]
  fx = np.fft.fftfreq(size[1])[None, :]
  return np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))


def filter_response(color: str, size: tuple[int, int], sigma1: float, sigma2: float) -> np.ndarray:
  """The transfer function of each colour's filter, from Gaussian blurs ``G`` as in the paper:
  red ``G(sigma2)`` (low-pass), blue ``1 - G(sigma1)`` (high-pass), green ``G(sigma1) - G(sigma2)``
  (band-pass), purple ``1 - (G(sigma1) - G(sigma2))`` (band-stop)."""
  if color == 'red':
    return gaussian_response(size, sigma2)
  if color == 'blue':
    return 1.0 - gaussian_response(size, sigma1)
  band = gaussian_response(size, sigma1) - gaussian_response(size, sigma2)
  if color == 'green':
    return band
  if color == 'purple':
    return 1.0 - band
  raise ValueError(f'color must be one of {COLORS}, got {color!r}.')


def make_noise_bank(color: str, bank_size: int, size: tuple[int, int], sigma1: float, sigma2: float,
                    seed: int) -> np.ndarray:
  """``[bank_size, H, W]`` float32 coloured-noise patterns, each with zero mean and unit variance."""
  rng = np.random.default_rng(seed)
  white = rng.standard_normal((bank_size, *size))
  response = filter_response(color, size, sigma1, sigma2)
  noise = np.fft.ifft2(np.fft.fft2(white) * response).real
  noise -= noise.mean(axis=(1, 2), keepdims=True)
  noise /= noise.std(axis=(1, 2), keepdims=True) + 1e-12
  return noise.astype(np.float32)


@register('colormae')
@dataclasses.dataclass(frozen=True)
class ColorNoiseMask(RatioCounts):
  """ColorMAE: keep the tokens with the strongest filtered noise (red/blue/green/purple), precomputed bank."""

  grid: Grid
  ratio: float = 0.75
  color: str = 'green'  # the paper's best colour
  sigma1: float = DEFAULT_SIGMA1  # weak blur std in tokens: blue, green, purple
  sigma2: float = DEFAULT_SIGMA2  # strong blur std in tokens: red, green, purple
  bank_size: int = 1024  # patterns precomputed at construction (the authors ship 3072)
  pattern_size: int | None = None  # side of each periodic pattern in tokens; None = 2 * max(grid)
  bank_seed: int = 0
  keep: str = 'high'  # 'high': keep the strongest noise (official code) | 'low': keep the weakest
  flips: bool = True  # random horizontal / vertical flips of the window (official code)
  _bank: np.ndarray = dataclasses.field(init=False, repr=False, compare=False, hash=False)

  def __post_init__(self):
    if self.color not in COLORS:
      raise ValueError(f'color must be one of {COLORS}, got {self.color!r}.')
    if self.keep not in ('high', 'low'):
      raise ValueError(f"keep must be 'high' or 'low', got {self.keep!r}.")
    if self.bank_size < 1:
      raise ValueError(f'bank_size must be >= 1, got {self.bank_size}.')
    if self.pattern_side < max(self.grid.height, self.grid.width):
      raise ValueError(f'pattern_size ({self.pattern_side}) must be >= the grid side '
                       f'({max(self.grid.height, self.grid.width)}).')
    if not 0.0 < self.sigma1 < self.sigma2:
      raise ValueError(f'need 0 < sigma1 < sigma2, got {self.sigma1}, {self.sigma2}.')
    _ = self.len_keep  # validates ratio
    bank = make_noise_bank(self.color, self.bank_size, (self.pattern_side, self.pattern_side),
                           self.sigma1, self.sigma2, self.bank_seed)
    object.__setattr__(self, '_bank', bank)

  @property
  def pattern_side(self) -> int:
    return self.pattern_size if self.pattern_size is not None else 2 * max(self.grid.height, self.grid.width)

  @property
  def bank(self) -> np.ndarray:
    """The precomputed ``[bank_size, P, P]`` noise patterns (read-only view)."""
    view = self._bank.view()
    view.flags.writeable = False
    return view

  def noise(self, rng: jax.Array, batch_size: int) -> jax.Array:
    """Per-example noise windows ``[B, N]``: random pattern, random wrap-around offset, random flips."""
    p = self.pattern_side
    # One uniform draw per example covers all five choices (a single PRNG call compiles much faster).
    u = jax.random.uniform(rng, (batch_size, 5))

    def pick(col: int, n: int) -> jax.Array:  # uniform integer in [0, n)
      return jnp.minimum(jnp.floor(u[:, col] * n), n - 1).astype(jnp.int32)

    flip_rows = u[:, 3] < 0.5 if self.flips else jnp.zeros((batch_size,), bool)
    flip_cols = u[:, 4] < 0.5 if self.flips else jnp.zeros((batch_size,), bool)
    return self.windows(pick(0, self.bank_size), pick(1, p), pick(2, p), flip_rows, flip_cols)

  def windows(self, idx: jax.Array, dy: jax.Array, dx: jax.Array, flip_rows: jax.Array,
              flip_cols: jax.Array) -> jax.Array:
    """Noise windows ``[B, N]`` (raster order) for given draws, each ``[B]``: pattern ``idx``, top-left offset
    ``(dy, dx)`` (wrapping around the periodic pattern), and whether the window's rows (vertical flip) and columns
    (horizontal flip) are reversed after the crop."""
    h, w, p = self.grid.height, self.grid.width, self.pattern_side
    batch_size = idx.shape[0]
    rows = (dy[:, None] + jnp.arange(h)[None, :]) % p  # [B, h]
    cols = (dx[:, None] + jnp.arange(w)[None, :]) % p  # [B, w]
    rows = jnp.where(flip_rows[:, None], rows[:, ::-1], rows)
    cols = jnp.where(flip_cols[:, None], cols[:, ::-1], cols)
    flat = (idx[:, None, None] * p + rows[:, :, None]) * p + cols[:, None, :]  # [B, h, w] into the flat bank
    return jnp.take(jnp.asarray(self._bank).reshape(-1), flat.reshape(batch_size, h * w), axis=0)

  def with_bank(self, bank: np.ndarray) -> ColorNoiseMask:
    """This generator over another ``[bank_size, P, P]`` bank (e.g. the authors' pattern file, or a parity
    fixture's), in place of the one built from the filters."""
    bank = np.asarray(bank, np.float32)
    if bank.shape != self._bank.shape:
      raise ValueError(f'the bank must be {self._bank.shape} (bank_size, pattern_size, pattern_size) for this '
                       f'generator, got {bank.shape}.')
    other = dataclasses.replace(self)
    object.__setattr__(other, '_bank', bank)
    return other

  def from_windows(self, window: jax.Array) -> MaskInfo:
    """The mask of given noise windows ``[B, N]``: the ``len_keep`` strongest (``keep='high'``) are visible."""
    # mask_from_scores keeps the smallest scores: negate to keep the strongest noise.
    return mask_from_scores(-window if self.keep == 'high' else window, self.len_keep)

  def __call__(self, rng: jax.Array, batch_size: int) -> MaskInfo:
    return self.from_windows(self.noise(rng, batch_size))
