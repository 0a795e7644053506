"""VideoMAE V2 ViT-B on Kinetics-400 (the official script's constants; see mim_jax.recipes.videomae_k400). Video
files are not read yet: ':cpu' runs the same code path on moving digits.

  python -m mim_jax.main --config=configs/videomae/k400.py:cpu --workdir=/tmp/videomae_cpu
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.videomae_k400(arg)
