"""MaskAlign ViT-Base/16 pre-training on ImageNet-1k, 200 epochs (Xue et al., CVPR 2023, "Stare at What You See:
Masked Image Modeling without Reconstruction"): no decoder; the student encodes the visible 30% of the tokens, its 12
block outputs are mixed by the dynamic-alignment matrix (W = I + 0.01) and linear heads, and aligned with Smooth L1
(x2) to the whitened last 5 block outputs of a frozen teacher on CLS + the same tokens; the visible tokens are drawn
in proportion to the teacher's last-layer CLS attention.

  python -m mim_jax.main --config=configs/maskalign/vit_base_in1k.py --workdir=gs://.../maskalign_base \
      --config.data.data_dir=/path/to/tensorflow_datasets --config.maskalign.teacher=gs://.../teacher_workdir
  python -m mim_jax.main --config=configs/maskalign/vit_base_in1k.py:cpu --workdir=/tmp/maskalign_cpu  # local steps

Settings (the authors' README command): ViT-B/16, batch 1024, AdamW (0.9, 0.95) wd 0.05 (none on the alignment
matrix), base lr 1.5e-4 x batch / 256, min lr 1e-5, 200 epochs with 20 warmup + cosine, drop path 0.1, mask 0.7,
target_norm whiten, smoothl1, top5, linear fusion, attention keep. The paper's teacher is CLIP ViT-B/16, which cannot
be had offline: the teacher here is a mim_jax pre-training workdir of a 12-block ViT on the same patches (linear
fusion needs equal depths; fusion='sum' otherwise). ':cpu' uses a random-init teacher and only checks the plumbing.
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.maskalign_in1k(arg)
