"""VideoMAE V2 on Kinetics-400 (the official scripts' constants; see mim_jax.recipes.videomae_k400): ViT-B by default,
':large' for ViT-L, ':v1' for VideoMAE. Convert the videos once, then point data.data_dir at them:

  python -m mim_jax.data.videos --src /path/to/k400 --out /data/k400_frames --name kinetics400
  python -m mim_jax.main --config=configs/videomae/k400.py --config.data.data_dir=/data/k400_frames --workdir=W
  python -m mim_jax.main --config=configs/videomae/k400.py:cpu --workdir=/tmp/videomae_cpu   # moving digits, seconds
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.videomae_k400(arg)
