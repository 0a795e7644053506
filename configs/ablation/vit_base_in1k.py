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

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.ablation_in1k(arg)
