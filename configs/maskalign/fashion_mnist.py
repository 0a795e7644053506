"""MaskAlign on Fashion-MNIST: the MAE recipe's student (configs/mae/fashion_mnist.py: same size, optimizer and
budget) with no decoder, its every block mixed by the dynamic-alignment matrix and aligned (Smooth L1, last 2 levels)
to the whitened block outputs of a frozen pre-trained MAE teacher of the same size, on CLS + the visible tokens, which
are drawn in proportion to the teacher's CLS attention (mask 0.7: 4 of 16 tokens visible).

  python -m mim_jax.main --config=configs/mae/fashion_mnist.py --workdir=workdirs/fashion_mae       # the teacher
  python -m mim_jax.main --config=configs/maskalign/fashion_mnist.py --workdir=workdirs/fashion_maskalign \
      --config.maskalign.teacher=workdirs/fashion_mae
  python -m mim_jax.main --config=configs/maskalign/fashion_mnist.py:tiny --workdir=/tmp/maskalign_tiny  # seconds

':tiny' uses a random-init teacher (plumbing only). The model.decoder block is MAE's and unused. The measured
comparison with MAE (and without dynamic alignment: --config.maskalign.fusion=simple; random keep:
--config.maskalign.keep=random) is in docs/methods.md.
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.maskalign_fashion_mnist(arg)
