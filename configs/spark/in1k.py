"""SparK ImageNet-1k pre-training (Tian et al., ICLR 2023, "Designing BERT for Convolutional Networks: Sparse and
Hierarchical Masked Modeling"): a ConvNet run sparse on the visible 40% of the 7x7 cells (masked cells are
zeroed and stay zero through every conv, pool and BatchNorm), hierarchical maps densified with per-scale mask
tokens, a light UNet decoder, per-patch normalized pixel MSE on the masked cells.

  python -m mim_jax.main --config=configs/spark/in1k.py --workdir=gs://.../spark_r50 \
      --config.data.data_dir=/path/to/tensorflow_datasets                       # ResNet-50, 1600 epochs
  python -m mim_jax.main --config=configs/spark/in1k.py:convnext_small --workdir=...
  python -m mim_jax.main --config=configs/spark/in1k.py:cpu --workdir=/tmp/spark_cpu   # a few local steps

Settings: keyu-tian/SparK pretrain/utils/arg_util.py and main.py (see mim_jax.recipes.spark_in1k). Published (their
README): ResNet-50 80.6 top-1 fine-tuned, ConvNeXt-S 84.1. Not run at scale here.
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.spark_in1k(arg)
