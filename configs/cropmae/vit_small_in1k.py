"""CropMAE ViT-S/16 on ImageNet-1k, 400 epochs (the authors' scripts/train_cropmae_in.sh): global crop 0.1-1.0, local
crop 0.3-0.6 of it, 2 of 196 patches visible (ratio 0.985), siamese decoder 256 x 4 x 8 heads (feed-forward 2048,
dropout 0.1), batch 2048, blr 1e-4, AdamW (0.9, 0.95), wd 0.05, warmup 5% of the epochs, norm-pix loss.

  python -m mim_jax.main --config=configs/cropmae/vit_small_in1k.py --workdir=gs://BUCKET/cropmae_vits
  python -m mim_jax.main --config=configs/cropmae/vit_small_in1k.py:cpu --workdir=/tmp/cropmae_cpu   # seconds
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.cropmae_in1k(arg)
