"""MAE end-to-end fine-tuning on ImageNet-1k,
ViT-H/14: 50 epochs, base_lr 1e-3, layer decay 0.75, drop path 0.3
(He et al. 2022, A.3).

  python -m mim_jax.main --config=configs/eval/finetune_vit_huge.py --config.init=<pretrain workdir> \
      --workdir=<eval workdir>
  python -m mim_jax.main --config=configs/eval/finetune_vit_huge.py:cpu --config.init=<vit_huge_in1k.py:cpu workdir> \
      --workdir=/tmp/ft_cpu   # a few local steps; or --config.random_init=True without an init

Batch 1024, AdamW (0.9, 0.999), weight decay 0.05, 5 warmup epochs, cosine to 1e-6, mixup 0.8, cutmix 1.0,
label smoothing 0.1, RandAugment (rand-m9-mstd0.5-inc1) and random erasing 0.25, global-average-pool + fc_norm
head. The recipe is mim_jax.eval.configs.finetune.
"""

from mim_jax.eval import configs


def get_config(arg: str | None = None):
  return configs.finetune('huge', arg)
