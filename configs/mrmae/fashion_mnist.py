"""MR-MAE on Fashion-MNIST: the MAE recipe's student (configs/mae/fashion_mnist.py) mimicking, on its visible tokens,
the last-layer features of a frozen pre-trained MAE teacher that sees the whole image.

  python -m mim_jax.main --config=configs/mrmae/fashion_mnist.py --workdir=workdirs/fashion_mrmae \
      --config.mrmae.teacher=workdirs/fashion_mae
  python -m mim_jax.main --config=configs/mrmae/fashion_mnist.py:tiny --workdir=/tmp/mrmae_tiny   # seconds

The paper's two teachers (CLIP and DINO): add --config.mrmae.second_teacher=workdirs/fashion_eval/mae (the recipe
MAE fine-tuned with the labels: its students see them; docs/methods.md). ':tiny' uses a random-init teacher
(plumbing only).
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.mrmae_fashion_mnist(arg)
