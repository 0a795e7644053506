"""MAE linear probing of a frozen pre-trained ViT (He et al. 2022, A.2); the recipe is mim_jax.eval.configs.

  python -m mim_jax.main --config=configs/eval/linear_probe.py:large --config.init=<pretrain workdir> \
      --workdir=<eval workdir>
  python -m mim_jax.main --config=configs/eval/linear_probe.py:digits --config.init=workdirs/mae_digits \
      --workdir=workdirs/eval_digits/mae

Arguments: ``base`` (default, ViT-B/16, 90 epochs), ``large`` (ViT-L/16, 50 epochs), ``huge`` (ViT-H/14,
50 epochs), each optionally with ``,cpu`` (a few local steps on cached digits features); or ``digits`` (the
quickstart: cached features, no augmentation, base_lr 10 at batch 256).

Protocol: CLS token after the encoder's final norm, no masking; BatchNorm without affine (eps 1e-6) + linear
(std 0.01); LARS (momentum 0.9, trust 0.001, no decay or trust ratio on 1-D params, lr applied after momentum);
lr = base_lr * batch / 256 with per-step warmup then cosine; train RandomResizedCrop(224, bicubic) + flip,
eval resize 256 + center crop 224; k-NN (k 20, T 0.07) on the same features.
"""

from mim_jax.eval import configs


def get_config(arg: str | None = None):
  return configs.linear_probe(arg)
