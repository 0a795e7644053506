"""The digits ablation: one method per run, everything else exactly the quickstart (configs/mae/digits.py:
data, ViT size, optimizer, 1000 steps at batch 128, evaluation with its random-init baseline).

  python -m mim_jax.main --config=configs/ablation/digits.py:VARIANT --workdir=workdirs/ablation/VARIANT
  python -m mim_jax.main --config=configs/ablation/digits.py:VARIANT,tiny --workdir=/tmp/x   # seconds
  bash benchmarks/ablation_digits.sh                                                         # all of them + table

VARIANT: mae (random masks, the quickstart itself), simmim (configs/simmim/digits.py), hpm
(configs/hpm/digits.py), block, colormae_red, colormae_blue, colormae_green, colormae_purple, gmml (MAE
with that mask generator at the quickstart's ratio; small-grid settings: blocks of >= 2 tokens, GMML
groups up to half a side).
"""

from mim_jax.methods import presets

MAE_MASKS = ('block', 'colormae_red', 'colormae_blue', 'colormae_green', 'colormae_purple', 'gmml')
VARIANTS = ('mae', 'simmim', 'hpm', *MAE_MASKS)


def get_config(arg: str | None = None):
  parts = presets.split_arg(arg)
  presets.check_parts(parts, {*VARIANTS, 'tiny'}, 'configs/ablation/digits.py')
  variants = [p for p in parts if p in VARIANTS]
  if len(variants) != 1:
    raise ValueError(f'configs/ablation/digits.py needs exactly one variant out of {VARIANTS} '
                     f'(e.g. :simmim or :simmim,tiny), got {arg!r}.')
  variant = variants[0]
  tiny = 'tiny' if 'tiny' in parts else None
  if variant == 'simmim':
    return presets.load_config_file('configs/simmim/digits.py', tiny)
  if variant == 'hpm':
    return presets.load_config_file('configs/hpm/digits.py', tiny)
  c = presets.load_config_file('configs/mae/digits.py', tiny)
  if variant in MAE_MASKS:
    presets.mae_mask(c, variant, small_grid=True)
  return c
