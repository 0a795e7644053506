"""Fine-tuning on the bundled digits: the quickstart's fine-tune accuracy (pre-trained vs random init).

  python -m mim_jax.main --config=configs/eval/finetune_digits.py --config.init=workdirs/mae_digits \
      --workdir=workdirs/eval_digits/mae
  python -m mim_jax.main --config=configs/eval/finetune_digits.py --config.init=workdirs/mae_digits \
      --config.random_init=True --workdir=workdirs/eval_digits/random_init   # same architecture, from scratch

The MAE fine-tune recipe scaled to 1347 training digits (batch 128, 100 epochs = 1000 steps, peak lr 5e-4,
layer decay 0.75, drop path 0.1, mixup 0.8 / cutmix 1.0, label smoothing 0.1, weight decay 0.05), with the
digits' own mild crops and no flip / RandAugment. ``:tiny`` runs a few steps (tests).
"""

from mim_jax.eval import configs


def get_config(arg: str | None = None):
  return configs.finetune_digits(arg)
