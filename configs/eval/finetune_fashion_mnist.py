"""Fine-tuning on Fashion-MNIST: the MAE recipe's encoder (configs/mae/fashion_mnist.py), pre-trained vs random init.

  python -m mim_jax.main --config=configs/eval/finetune_fashion_mnist.py --config.init=workdirs/fashion_mae \
      --workdir=workdirs/fashion_eval/mae
  python -m mim_jax.main --config=configs/eval/finetune_fashion_mnist.py --config.init=workdirs/fashion_mae \
      --config.random_init=True --workdir=workdirs/fashion_eval/random_init   # same architecture, from scratch

10 epochs at batch 256 (2,340 steps), peak lr 1e-3, layer decay 0.75, drop path 0.1, label smoothing 0.1, mild
crops + flips, no mixup / CutMix (mim_jax.eval.configs.finetune_fashion_mnist says why). ``:tiny`` runs a few
steps (tests).
"""

from mim_jax.eval import configs


def get_config(arg: str | None = None):
  return configs.finetune_fashion_mnist(arg)
