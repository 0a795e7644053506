"""Selfie on the bundled digits (16 px, a 4x4 grid of 4 px patches, 4 targets per image; the patch network is the
first 3 stages of a small-stem ResNet).

  python -m mim_jax.main --config=configs/selfie/digits.py --workdir=workdirs/selfie_digits/selfie_seed0
  python -m mim_jax.main --config=configs/selfie/digits.py:batch_negatives \
      --workdir=workdirs/selfie_digits/batch_negatives_seed0     # the negative control
  python -m mim_jax.main --config=configs/selfie/digits.py:tiny --workdir=/tmp/selfie_tiny    # seconds

The whole comparison (3 seeds, patch selection on held-out digits, fine-tuning from 10% of the labels against
random init): python benchmarks/selfie_digits.py. Results: README ("Selfie").
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.selfie_digits(arg)
