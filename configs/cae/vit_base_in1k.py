"""CAE ViT-Base/16 pre-training on ImageNet-1k, 800 epochs (Chen et al., IJCV 2023, "Context Autoencoder for
Self-Supervised Representation Learning"): the encoder sees the visible half of the patches (BEiT block masks, 98 of
196), a 4-block latent regressor predicts the masked patches' latents by cross-attention, the prediction is aligned
(MSE, weight 2) with the encoder's own latents of the masked patches (no gradient), and a 4-block decoder maps it to
the target.

  python -m mim_jax.main --config=configs/cae/vit_base_in1k.py --workdir=gs://.../cae_base \
      --config.data.data_dir=/path/to/tensorflow_datasets
  python -m mim_jax.main --config=configs/cae/vit_base_in1k.py:cpu --workdir=/tmp/cae_cpu   # a few local steps

Settings (the authors' scripts/cae_base_800e.sh and tools/run_pretraining.py): batch 2048, lr 1.5e-3 at that batch
(not rescaled; base_lr 1.875e-4 here), AdamW (0.9, 0.999) wd 0.05, 20 warmup epochs + cosine to min lr 1e-5, grad
clip 3.0, drop path 0.1, LayerScale 0.1 in encoder, regressor and decoder, regressor and decoder width 768 with 12
heads, CAE's sin-cos layout. Deviation: the official target is the DALL-E tokenizer's codes (8192-way cross-entropy),
which cannot be had offline; this config regresses normalized pixels of the masked patches (cae.target='pixels';
'teacher' regresses a frozen teacher's features instead). Published (their README, tokenizer target, 800 epochs):
83.8 top-1 fine-tuned, 68.9 linear probe.
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.cae_in1k(arg)
