"""Fine-tuning a VideoMAE workdir on moving-digits clips (the digit class; ':direction' for the motion).

  python -m mim_jax.main --config=configs/videomae/finetune_moving_digits.py \
      --config.init=workdirs/video/v2_seed0 --workdir=workdirs/video/ft_v2_seed0

The recipe is mim_jax.eval.configs.videomae_finetune_moving_digits.
"""

from mim_jax.eval import configs


def get_config(arg: str | None = None):
  return configs.videomae_finetune_moving_digits(arg)
