"""MAE ViT-Base/16 pre-training on ImageNet-1k, 800 epochs (the paper's recipe; see mim_jax/recipes.py).

  python -m mim_jax.main --config=configs/mae/vit_base_in1k.py --workdir=gs://.../mae_base \
      --config.data.data_dir=/path/to/tensorflow_datasets
  python -m mim_jax.main --config=configs/mae/vit_base_in1k.py:cpu --workdir=/tmp/mae_base_cpu   # a few local steps
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.mae_in1k('base/16', 800.0, arg)
