"""CAE on Fashion-MNIST: the MAE recipe's encoder, data, optimizer and budget (configs/mae/fashion_mnist.py) with
CAE's parts: block masks at 50% (8 of 16 tokens), LayerScale 0.1, a 2-block latent regressor and a 2-block decoder at
the encoder's width, alignment weight 2, normalized-pixel target (the paper's tokenizer target cannot be had
offline).

  python -m mim_jax.main --config=configs/cae/fashion_mnist.py --workdir=workdirs/fashion_cae
  python -m mim_jax.main --config=configs/cae/fashion_mnist.py:tiny --workdir=/tmp/cae_tiny    # seconds

The measured comparison with MAE and without alignment (--config.cae.align_weight=0) is in docs/methods.md.
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.cae_fashion_mnist(arg)
