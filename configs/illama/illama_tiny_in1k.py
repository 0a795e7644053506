"""iLLaMA-tiny trained from scratch on ImageNet-1k with the official recipe (scripts/train_illama_tiny_in1k.sh).

  python -m mim_jax.main --config=configs/illama/illama_tiny_in1k.py --workdir=workdirs/illama_tiny_in1k
  python -m mim_jax.main --config=configs/illama/illama_tiny_in1k.py:cpu --workdir=/tmp/illama_cpu   # a few steps

Needs ImageNet prepared (docs/data.md); the recipe is mim_jax.eval.configs.illama_in1k.
"""

from mim_jax.eval import configs


def get_config(arg: str | None = None):
  return configs.illama_in1k('tiny', arg)
