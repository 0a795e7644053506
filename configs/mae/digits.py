"""MAE on the bundled digits dataset (scikit-learn's 1797 real 8x8 digits, upsampled to 16x16): the quickstart.

  python -m mim_jax.main --config=configs/mae/digits.py --workdir=workdirs/mae_digits

Pre-trains a small ViT (patch 4 -> a 4x4 token grid, width 128) with MAE's recipe scaled to the data
(mask 0.75, norm-pix MSE, AdamW 0.9/0.95, wd 0.05, warmup + cosine), then evaluates the frozen encoder
(linear probe, kNN, logistic regression) next to the same probes on a randomly initialised encoder, and
draws a reconstruction figure (about 2 minutes of training on a 2-core CPU; the recipe is
mim_jax.recipes.mae_digits, timings in the README).
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.mae_digits(arg)
