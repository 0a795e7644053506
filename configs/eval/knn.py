"""Weighted k-NN (k 20, temperature 0.07, DINO's protocol) on a frozen encoder's CLS features.

  python -m mim_jax.main --config=configs/eval/knn.py:digits --config.init=workdirs/mae_digits \
      --workdir=workdirs/eval_digits/mae

Arguments: none (ImageNet-style eval transform), ``cpu`` (a few hundred digits at 32x32) or ``digits``.
"""

from mim_jax.eval import configs


def get_config(arg: str | None = None):
  return configs.knn(arg)
