"""DMAE ViT-Base/16 pre-training on ImageNet-1k, 100 epochs (Bai et al., 2022, "Masked Autoencoders Enable Efficient
Knowledge Distillers"): MAE's recipe plus L1 distillation of the student's block 8 (through a linear head to the
teacher's width) onto the normalized block-17 hidden states of a frozen MAE ViT-L/16 teacher, on the same visible
patches.

  python -m mim_jax.main --config=configs/dmae/vit_base_in1k.py --workdir=gs://.../dmae_base \
      --config.data.data_dir=/path/to/tensorflow_datasets --config.dmae.teacher=gs://.../mae_large_workdir
  python -m mim_jax.main --config=configs/dmae/vit_base_in1k.py:cpu --workdir=/tmp/dmae_cpu   # a few local steps

Settings (the authors' pretrain.sh): MAE ViT-B (mask 0.75, decoder 512 x 8 x 16, norm-pix), AdamW (0.9, 0.95) wd
0.05, base lr 1.5e-4 x batch / 256, batch 4096 (their 128 x 8 GPUs x 4 accumulation), 100 epochs with MAE's 40
warmup epochs + cosine; teacher block 17 -> student block 8 (0-based), fc-1layer projection 768 -> 1024, L1 on
l2-normalized features, weight 1. The teacher (config.dmae.teacher) is a mim_jax workdir, e.g. an MAE ViT-L run, or
a mim_jax .safetensors file converted from the official mae_pretrain_vit_large.pth (python -m mim_jax.convert --from
mae_official --to mim_jax). ':cpu' uses a random-init teacher and only checks the plumbing. Published: 84.0 top-1
fine-tuned at mask 0.75 (83.6 at 0.95).
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.dmae_in1k(arg)
