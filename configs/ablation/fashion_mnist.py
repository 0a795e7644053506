"""The Fashion-MNIST method table: one method per run, everything else exactly configs/mae/fashion_mnist.py (data,
ViT size, optimizer, budget, evaluation with its random-init and raw-pixel baselines).

  python -m mim_jax.main --config=configs/ablation/fashion_mnist.py:VARIANT --workdir=workdirs/fashion/VARIANT
  python -m mim_jax.main --config=configs/ablation/fashion_mnist.py:VARIANT,tiny --workdir=/tmp/x   # seconds

VARIANT: mae, simmim (2x2-token cells at 0.6), hpm (EMA decays scaled to the run), block, colormae_red,
colormae_blue, colormae_green, colormae_purple, gmml (MAE with that mask generator at 0.75; small-grid settings).
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.ablation_fashion_mnist(arg)
