"""MAE + HPM on the bundled digits: the quickstart (configs/mae/digits.py: same ViT, data, optimizer, steps,
masking ratio and evaluation) with HPM's loss predictor, relative objective and easy-to-hard masks.

  python -m mim_jax.main --config=configs/hpm/digits.py --workdir=workdirs/hpm_digits
  python -m mim_jax.main --config=configs/hpm/digits.py:tiny --workdir=/tmp/hpm_tiny   # seconds

The EMA teacher's decays are rescaled to the run: the paper's 0.999 -> 0.9999 are time constants of 0.4% -> 4%
of its 250k steps; over the quickstart's 2000 steps the same fractions give 0.875 -> 0.9875 (with 0.999 the
teacher would still be close to its random init at the end).
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.hpm_digits(arg)
