"""DMAE on Fashion-MNIST: the MAE recipe's student (configs/mae/fashion_mnist.py) at DMAE's high-ratio regime (mask
0.875: 2 of 16 tokens visible), distilling its block 2 onto block 2 of a frozen pre-trained MAE teacher.

  python -m mim_jax.main --config=configs/mae/fashion_mnist.py --workdir=workdirs/fashion_mae       # the teacher
  python -m mim_jax.main --config=configs/dmae/fashion_mnist.py --workdir=workdirs/fashion_dmae \
      --config.dmae.teacher=workdirs/fashion_mae
  python -m mim_jax.main --config=configs/dmae/fashion_mnist.py:tiny --workdir=/tmp/dmae_tiny      # seconds

':tiny' uses a random-init teacher (plumbing only). The measured comparison with MAE at the same ratio, and with a
random-init teacher of the same architecture (--config.dmae.teacher_random=True), is in docs/methods.md.
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.dmae_fashion_mnist(arg)
