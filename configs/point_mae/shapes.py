"""Point-MAE on the bundled procedural shapes (mim_jax.data.shapes3d: 10 classes, 2000 training and 500 test
clouds, built offline on first use).

  python -m mim_jax.main --config=configs/point_mae/shapes.py --workdir=workdirs/point_mae/seed0
  python -m mim_jax.main --config=configs/point_mae/shapes.py:tiny --workdir=/tmp/point_mae_tiny   # seconds

The recipe is mim_jax.recipes.point_mae_shapes (':paper' has the official model sizes).
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.point_mae_shapes(arg)
