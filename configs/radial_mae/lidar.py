"""R-MAE (radial masking) on the bundled procedural LiDAR sweeps (mim_jax.data.lidar: 2000 training and 200 test
sweeps as 8 x 64 x 64 voxel grids, built offline on first use, ~3 min).

  python -m mim_jax.main --config=configs/radial_mae/lidar.py --workdir=workdirs/radial_mae/seed0
  python -m mim_jax.main --config=configs/radial_mae/lidar.py:official --workdir=workdirs/radial_mae/official
  python -m mim_jax.main --config=configs/radial_mae/lidar.py:tiny --workdir=/tmp/radial_mae_tiny   # seconds

The recipe is mim_jax.recipes.radial_mae_lidar.
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.radial_mae_lidar(arg)
