"""SparK on Fashion-MNIST (resized to 32 px) with the ConvNet anchor's ResNet (R18 blocks at a quarter of the
width, the small stem): 4x4 cells of 8 px, 6 of 16 visible, LAMB, ~10 epochs.

  python -m mim_jax.main --config=configs/spark/fashion_mnist.py --workdir=workdirs/spark_fashion/sparse_seed0
  python -m mim_jax.main --config=configs/spark/fashion_mnist.py:dense --workdir=workdirs/spark_fashion/dense_seed0
  python -m mim_jax.main --config=configs/spark/fashion_mnist.py:tiny --workdir=/tmp/spark_tiny    # seconds

':dense' is the naive baseline SparK argues against (zeroed pixels, dense encoder and BatchNorm). Results and the
random-init baseline: README ("SparK").
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.spark_fashion_mnist(arg)
