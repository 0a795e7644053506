"""CropMAE on Fashion-MNIST: the MAE recipe's encoder, data, optimizer and budget (configs/mae/fashion_mnist.py) with
CropMAE's views (the recipe's crop as the global reference, a 0.3-0.6 crop of it as the local view, each flipped on
its own) and 2 of the local view's 16 tokens visible.

  python -m mim_jax.main --config=configs/cropmae/fashion_mnist.py --workdir=workdirs/fashion_cropmae
  python -m mim_jax.main --config=configs/cropmae/fashion_mnist.py:tiny --workdir=/tmp/cropmae_tiny    # seconds

The measured comparison with MAE at the same visibility is in docs/methods.md.
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.cropmae_fashion_mnist(arg)
