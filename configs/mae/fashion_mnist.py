"""MAE on Fashion-MNIST (70,000 28x28 grayscale clothing images, 10 classes), built offline on first use.

  python -m mim_jax.main --config=configs/mae/fashion_mnist.py --workdir=workdirs/mae_fashion
  python -m mim_jax.main --config=configs/mae/fashion_mnist.py:tiny --workdir=/tmp/mae_fashion_tiny   # seconds
  python -m mim_jax.main --config=configs/mae/fashion_mnist.py:large --workdir=workdirs/fashion_mae_large
      # a 192 x 6 encoder: the larger teacher of the teacher-target methods (about 4x the recipe's compute)

The data come from Debian's package (apt-get install dataset-fashion-mnist) or from the four IDX files in a folder
given as --config.data.src=DIR; the recipe is mim_jax.recipes.mae_fashion_mnist (results in the README).
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.mae_fashion_mnist(arg)
