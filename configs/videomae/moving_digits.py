"""VideoMAE V2 (and V1) on moving digits: synthetic clips made offline from the bundled digits.

  python -m mim_jax.main --config=configs/videomae/moving_digits.py --workdir=workdirs/video/v2_seed0
  python -m mim_jax.main --config=configs/videomae/moving_digits.py:v1 --workdir=workdirs/video/v1_seed0
  python -m mim_jax.main --config=configs/videomae/moving_digits.py:tiny --workdir=/tmp/videomae_tiny   # seconds

The recipe is mim_jax.recipes.videomae_moving_digits; the clips are mim_jax.data.clips ('moving').
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.videomae_moving_digits(arg)
