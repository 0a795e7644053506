"""SimMIM on the bundled digits: the quickstart (configs/mae/digits.py: same ViT, data, optimizer, steps and
evaluation) with SimMIM's mask-token encoder, linear head, L1 raw-pixel loss and coarse masks.

  python -m mim_jax.main --config=configs/simmim/digits.py --workdir=workdirs/simmim_digits
  python -m mim_jax.main --config=configs/simmim/digits.py:tiny --workdir=/tmp/simmim_tiny   # seconds

Masks: 2x2-token cells (SimMIM's 32 px cells over 16 px tokens) on the 4x4 token grid, ratio 0.6 with
MAE's rounding: 10 of 16 tokens masked (two whole cells and half of a third), since whole-cell rounding
would leave only the four 3-of-4-cell patterns.
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.simmim_digits(arg)
