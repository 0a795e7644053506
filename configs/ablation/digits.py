"""The digits ablation: one method per run, everything else exactly the quickstart (configs/mae/digits.py:
data, ViT size, optimizer, 2000 steps at batch 128, evaluation with its random-init baseline).

  python -m mim_jax.main --config=configs/ablation/digits.py:VARIANT --workdir=workdirs/ablation/VARIANT
  python -m mim_jax.main --config=configs/ablation/digits.py:VARIANT,tiny --workdir=/tmp/x   # seconds
  bash benchmarks/ablation_digits.sh                                                         # all of them + table

VARIANT: mae (random masks, the quickstart itself), simmim (configs/simmim/digits.py), hpm
(configs/hpm/digits.py), block, colormae_red, colormae_blue, colormae_green, colormae_purple, gmml (MAE
with that mask generator at the quickstart's ratio; small-grid settings: blocks of >= 2 tokens, GMML
groups up to half a side).
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.ablation_digits(arg)
