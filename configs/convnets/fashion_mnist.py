"""A ConvNet (ResNet or ConvNeXt) trained from scratch on Fashion-MNIST: the ConvNet anchor of the benchmark.

  python -m mim_jax.main --config=configs/convnets/fashion_mnist.py --workdir=workdirs/convnets_fashion/resnet
  python -m mim_jax.main --config=configs/convnets/fashion_mnist.py:convnext \
      --workdir=workdirs/convnets_fashion/convnext
  python -m mim_jax.main --config=configs/convnets/fashion_mnist.py:tiny --workdir=/tmp/resnet_tiny   # seconds

The recipe is mim_jax.eval.configs.convnet_fashion_mnist; results in the README ("Backbones").
"""

from mim_jax.eval import configs


def get_config(arg: str | None = None):
  return configs.convnet_fashion_mnist(arg)
