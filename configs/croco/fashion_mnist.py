"""CroCo on Fashion-MNIST: the MAE recipe's encoder (without a CLS token: the probes read the mean patch token),
data, optimizer and budget, with CroCo's views (two random homographies of one image, corners moved by up to 15%)
and view 1 masked by CroCo's count (int(0.9 x 16) = 14 masked, 2 visible).

  python -m mim_jax.main --config=configs/croco/fashion_mnist.py --workdir=workdirs/fashion_croco
  python -m mim_jax.main --config=configs/croco/fashion_mnist.py:tiny --workdir=/tmp/croco_tiny    # seconds
  python -m mim_jax.main --config=configs/croco/fashion_mnist.py:v2 --workdir=workdirs/fashion_croco_v2  # RoPE

The measured checks (cross-view completion, patch correspondence) are in docs/methods.md.
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.croco_fashion_mnist(arg)
