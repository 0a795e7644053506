"""SimMIM ViT-Base/16 pre-training on ImageNet-1k, 800 epochs (Xie et al. 2022; the authors'
``simmim_pretrain__vit_base__img224__800ep`` settings).

  python -m mim_jax.main --config=configs/simmim/vit_base_in1k.py --workdir=gs://.../simmim_base \
      --config.data.data_dir=/path/to/tensorflow_datasets
  python -m mim_jax.main --config=configs/simmim/vit_base_in1k.py:cpu --workdir=/tmp/simmim_cpu   # a few local steps

Paper settings: ViT-B/16 at 224 px, coarse random masks (32 px cells over 16 px tokens, ratio 0.6), linear
head, L1 on masked pixels (raw, dataset-normalized), batch 2048, AdamW (0.9, 0.999) wd 0.05, lr 4e-4 (base
1e-4 x 2048 / 512), 10 warmup epochs, lr x0.1 at epoch 700, grad clip 5.0, drop path 0.1,
RandomResizedCrop(scale 0.67-1, ratio 3/4-4/3) + horizontal flip.

Differences (docs/methods.md): sin-cos absolute positions instead of the shared relative position bias and
layer scale; warmup starts at 0 instead of 5e-7 x batch / 512; the resize is bicubic (the authors' train crop
is bilinear); CLS/mask tokens are weight-decayed.

``arg``: 'cpu' shrinks to a few steps on the bundled digits (32 px, patch 8, 16 px mask cells); 'epochs=N'.
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.simmim_in1k(arg)
