"""ViT-B/16 ImageNet-1k recipes for every arm of the masking ablation (the papers' settings at ViT-B scale).

  python -m mim_jax.main --config=configs/ablation/vit_base_in1k.py:VARIANT --workdir=gs://.../VARIANT \
      --config.data.data_dir=/path/to/tensorflow_datasets
  python -m mim_jax.main --config=configs/ablation/vit_base_in1k.py:VARIANT,cpu --workdir=/tmp/x   # a few local steps

VARIANT:
* mae: configs/mae/vit_base_in1k.py (800 epochs, mask 0.75, norm-pix).
* block: MAE with BEiT block-wise masks at 0.75 (the MAE paper's block-masking ablation; BEiT's blocks of
  >= 16 tokens, aspect 0.3-3.3).
* colormae_red / _blue / _green / _purple: MAE with ColorMAE filtered-noise masks at 0.75 (the ColorMAE paper
  pre-trains MAE ViT-B with these masks; green is its best colour). The filter widths are ours (docs/masking.md).
* gmml: MAE with GMML-style connected groups at 0.75 (GMML itself uses an in-place corrupted encoder at
  ~0.6; docs/methods.md).
* hpm: configs/hpm/vit_base_in1k.py.  simmim: configs/simmim/vit_base_in1k.py.
'epochs=N' changes the schedule length; 'cpu' runs a few steps on the bundled digits.
"""

from mim_jax.methods import presets
from mim_jax.recipes import mae_in1k

MAE_MASKS = ('block', 'colormae_red', 'colormae_blue', 'colormae_green', 'colormae_purple', 'gmml')
VARIANTS = ('mae', 'simmim', 'hpm', *MAE_MASKS)


def get_config(arg: str | None = None):
  parts = presets.split_arg(arg)
  rest = [p for p in parts if p not in VARIANTS]
  presets.check_parts([p for p in rest if not p.startswith('epochs=')], {'cpu'}, 'configs/ablation/vit_base_in1k.py')
  variants = [p for p in parts if p in VARIANTS]
  if len(variants) != 1:
    raise ValueError(f'configs/ablation/vit_base_in1k.py needs exactly one variant out of {VARIANTS} '
                     f'(e.g. :block or :block,cpu), got {arg!r}.')
  variant, recipe_arg = variants[0], ','.join(rest) or None
  if variant == 'simmim':
    return presets.load_config_file('configs/simmim/vit_base_in1k.py', recipe_arg)
  if variant == 'hpm':
    return presets.load_config_file('configs/hpm/vit_base_in1k.py', recipe_arg)
  c = mae_in1k('base/16', 800.0, recipe_arg)
  if variant in MAE_MASKS:
    presets.mae_mask(c, variant, small_grid='cpu' in rest)
  return c
