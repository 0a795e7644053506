"""Method settings as overrides of a base config, shared by configs/simmim, configs/hpm and configs/ablation.

A method here changes only what defines it (method name, mask, target, its own block), so the same
override turns the digits quickstart or the MAE ImageNet recipe into that method with everything else
(data, model size, optimizer, budget, evaluation) unchanged. Paper recipes that also change the optimizer
or the data (SimMIM's ViT-B) set those in their own config file.
"""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections

from mim_jax.methods.hpm import hpm_defaults

REPO = pathlib.Path(__file__).resolve().parents[2]

# MAE with another mask generator. 'small_grid' settings are for token grids of a few tokens a side (the
# digits quickstart's 4x4), where the ViT-B defaults degenerate: a 16-token minimum block is the whole
# grid, and GMML's 30%-of-a-side groups are single tokens.
MASK_VARIANTS: dict[str, dict] = {
    'random': dict(name='random'),
    'block': dict(name='block'),
    'colormae_red': dict(name='colormae', color='red'),
    'colormae_blue': dict(name='colormae', color='blue'),
    'colormae_green': dict(name='colormae', color='green'),
    'colormae_purple': dict(name='colormae', color='purple'),
    'gmml': dict(name='gmml'),
}
SMALL_GRID_SETTINGS: dict[str, dict] = {
    'block': dict(min_block=2),
    'gmml': dict(max_side=0.5),
}

# HPM's EMA teacher: decay 0.999 -> 0.9999, i.e. time constants of 1e3 -> 1e4 steps, in a run of 800 epochs
# x 312 steps (ImageNet-1k at batch 4096) = 250k steps: 0.4% -> 4% of training.
HPM_EMA_TIME_FRACTIONS = (1e3 / 250_200, 1e4 / 250_200)


def load_config_file(relative_path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of a config file given relative to the repository root (to build on another config
  without copying it, e.g. the digits quickstart)."""
  path = REPO / relative_path
  if not path.is_file():
    raise FileNotFoundError(f'config file {path} not found.')
  spec = importlib.util.spec_from_file_location('cfg_' + relative_path.replace('/', '_').replace('.', '_'), path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def mae_mask(c: ml_collections.ConfigDict, variant: str, small_grid: bool = False) -> ml_collections.ConfigDict:
  """MAE with the named mask generator at the config's ratio (``MASK_VARIANTS``)."""
  if variant not in MASK_VARIANTS:
    raise ValueError(f'unknown mask variant {variant!r}; choose one of {sorted(MASK_VARIANTS)}.')
  c.method = 'mae'
  settings = dict(MASK_VARIANTS[variant], ratio=c.mask.ratio)
  if small_grid:
    settings.update(SMALL_GRID_SETTINGS.get(variant, {}))
  c.mask = settings
  return c


def simmim(c: ml_collections.ConfigDict, *, mask_patch_size: int | None = 32, scale: int | None = None,
           rounding: str = 'simmim') -> ml_collections.ConfigDict:
  """SimMIM: mask-token encoder, linear head, L1 on raw (dataset-normalized) pixels, coarse masks at ratio 0.6.

  ``mask_patch_size`` (pixels; the token size comes from the encoder) or ``scale`` (tokens per cell side)."""
  c.method = 'simmim'
  c.norm_pix_loss = False
  mask = dict(name='coarse', ratio=0.6, rounding=rounding)
  if scale is not None:
    mask['scale'] = scale
  else:
    mask['mask_patch_size'] = mask_patch_size
  c.mask = mask
  return c


def hpm(c: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
  """MAE + HPM (loss predictor, relative objective, easy-to-hard masks from an EMA teacher) with random masks
  at the config's ratio. ``overrides`` go into ``config.hpm`` (see :func:`mim_jax.methods.hpm.hpm_defaults`)."""
  c.method = 'hpm'
  c.mask = dict(name='random', ratio=c.mask.ratio)
  block = hpm_defaults()
  block.update(overrides)
  c.hpm = block
  return c


def hpm_ema_for_steps(total_steps: int) -> dict:
  """EMA decays whose time constants are the same fractions of a ``total_steps`` run as the paper's are of
  its 250k steps (0.999 -> 0.9999 there; 0.75 -> 0.975 for 1000 steps)."""
  lo, hi = (max(1.0, f * total_steps) for f in HPM_EMA_TIME_FRACTIONS)
  return dict(ema_decay_start=round(1.0 - 1.0 / lo, 6), ema_decay_end=round(1.0 - 1.0 / hi, 6))


def split_arg(arg: str | None) -> list[str]:
  return [part for part in (arg or '').split(',') if part]


def check_parts(parts: list[str], allowed: set[str], file: str) -> None:
  unknown = [p for p in parts if p not in allowed]
  if unknown:
    raise ValueError(f'unknown argument(s) {unknown} for {file}; use a comma-separated subset of {sorted(allowed)}.')

