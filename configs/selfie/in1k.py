"""Selfie on ImageNet-1k with ResNet-50 (224 px, 7x7 patches of 32 px; constants the paper leaves open are
marked in mim_jax.recipes.selfie_in1k).

  python -m mim_jax.main --config=configs/selfie/in1k.py --workdir=gs://bucket/selfie_r50
  python -m mim_jax.main --config=configs/selfie/in1k.py:cpu --workdir=/tmp/selfie_cpu    # a few steps on digits
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.selfie_in1k(arg)
