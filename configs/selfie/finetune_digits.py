"""Selfie's few-label claim on the bundled digits: fine-tune the ResNet on 10% of the training labels from a Selfie
workdir (its first 3 stages pre-trained, the 4th fresh) or from random init (the same architecture).

  python -m mim_jax.main --config=configs/selfie/finetune_digits.py \
      --config.init=workdirs/selfie_digits/selfie_seed0 --workdir=workdirs/selfie_digits/ft_selfie_seed0
  python -m mim_jax.main --config=configs/selfie/finetune_digits.py --config.random_init=True \
      --workdir=workdirs/selfie_digits/ft_random_seed0

The recipe is mim_jax.eval.configs.selfie_finetune_digits; the whole comparison: python benchmarks/selfie_digits.py.
"""

from mim_jax.eval import configs


def get_config(arg: str | None = None):
  return configs.selfie_finetune_digits(arg)
