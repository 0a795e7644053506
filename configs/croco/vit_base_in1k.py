"""CroCo v1 ViT-B/16 (naver/croco pretrain.py defaults): encoder without CLS, view 1 masked at 0.9 (CroCo's count),
decoder 512 x 8 x 16 heads with cross-attention to view 2, norm-pix loss, blr 1.5e-4 at batch 256 (64 per GPU x 4),
AdamW (0.9, 0.95), wd 0.05, 40 warmup epochs, cosine over 800 epochs stopped at 400. Their pairs are Habitat renders
(a download); here two random homographies of each ImageNet photo (a planar stand-in, docs/methods.md).

  python -m mim_jax.main --config=configs/croco/vit_base_in1k.py --workdir=gs://BUCKET/croco_vitb
  python -m mim_jax.main --config=configs/croco/vit_base_in1k.py:cpu --workdir=/tmp/croco_cpu    # seconds
  python -m mim_jax.main --config=configs/croco/vit_base_in1k.py:v2 --workdir=gs://BUCKET/croco_v2_vitl  # CroCo v2

':v2' is CroCo v2's largest recipe from their README: ViT-L/16 encoder, decoder 768 x 12 x 12 heads, RoPE100 instead
of absolute positions, batch 512 (64 x 8), 12 warmup epochs, cosine over 250 epochs stopped at 125.
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.croco_in1k(arg)
