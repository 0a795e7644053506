"""MultiMAE (RGB + depth + semantics) on the bundled procedural 2.5-D scenes (mim_jax.data.scenes25d: 2000 training
and 200 test scenes of 64 x 64 px with exact depth and classes, built offline on first use).

  python -m mim_jax.main --config=configs/multimae/scenes.py --workdir=workdirs/multimae/seed0
  python -m mim_jax.main --config=configs/multimae/scenes.py:tiny --workdir=/tmp/multimae_tiny   # seconds

The recipe is mim_jax.recipes.multimae_scenes (':paper' has the official model sizes).
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.multimae_scenes(arg)
