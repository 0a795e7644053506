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

from mim_jax.methods import presets
from mim_jax.recipes import mae_in1k


def get_config(arg: str | None = None):
  parts = presets.split_arg(arg)
  presets.check_parts([p for p in parts if not p.startswith('epochs=')], {'cpu'}, 'configs/simmim/vit_base_in1k.py')
  cpu = 'cpu' in parts
  c = mae_in1k('base/16', 800.0, arg)  # the shared ImageNet skeleton, and the 'cpu' / 'epochs=N' handling
  presets.simmim(c, mask_patch_size=16 if cpu else 32)  # cpu: 2x2-token cells on the 4x4 grid, as 32/16 on ViT-B
  c.model.encoder.drop_path = 0.1
  c.warmup_epochs = 10.0
  # SimMIM scales the learning rate by batch / 512 (lr = 1e-4 x 2048 / 512 = 4e-4); mim_jax scales by batch / 256,
  # so base_lr = 1e-4 x 256 / 512 = 5e-5 gives the paper's lr at every batch size (5e-5 x 2048 / 256 = 4e-4).
  c.optimizer.base_lr = 5e-5
  c.optimizer.b2 = 0.999
  c.optimizer.grad_clip_norm = 5.0
  c.optimizer.schedule = 'multistep'
  c.optimizer.milestones = (700 / 800,)  # x0.1 at epoch 700 of 800 (a fraction, so 'epochs=N' keeps the shape)
  c.optimizer.gamma = 0.1
  if not cpu:
    c.batch_size = 2048
    c.data.crop_scale = (0.67, 1.0)
    c.data.crop_ratio = (3 / 4, 4 / 3)
    c.data.hflip = True
  return c
