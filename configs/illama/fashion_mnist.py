"""iLLaMA trained from scratch (supervised) on Fashion-MNIST: the soft-mask schedule against causal from the start.

  python -m mim_jax.main --config=configs/illama/fashion_mnist.py --workdir=workdirs/illama_fashion/soft
  python -m mim_jax.main --config=configs/illama/fashion_mnist.py:causal --workdir=workdirs/illama_fashion/causal
  python -m mim_jax.main --config=configs/illama/fashion_mnist.py:tiny --workdir=/tmp/illama_tiny   # seconds

Modes: soft (default), linear, causal, bidirectional (mim_jax.eval.configs.illama_fashion_mnist); results in the
README ("Backbones").
"""

from mim_jax.eval import configs


def get_config(arg: str | None = None):
  return configs.illama_fashion_mnist(arg)
