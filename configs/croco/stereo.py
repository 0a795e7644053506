"""CroCo on a real rectified stereo pair (the bundled mim_stereo dataset: scikit-image's Middlebury motorcycle,
built offline on first use): view 1 a 96-192 px window of the left image resized to 64 px (patch 8, 8 x 8 tokens)
masked at 0.9 (7 of 64 visible), view 2 the right image's window shifted by the median disparity. Train windows lie
in the left 2/3 of the image, held-out ones in the rest.

  python -m mim_jax.main --config=configs/croco/stereo.py --workdir=workdirs/stereo_croco
  python -m mim_jax.main --config=configs/croco/stereo.py:mae --workdir=workdirs/stereo_mae   # one-view baseline
  python -m mim_jax.main --config=configs/croco/stereo.py:tiny --workdir=/tmp/croco_stereo_tiny   # seconds

There are no labels (no probes); the checks (loss with the true vs another window's reference, vs MAE) are in
benchmarks/two_view_checks.py --stereo and docs/methods.md.
"""

from mim_jax import recipes


def get_config(arg: str | None = None):
  return recipes.croco_stereo(arg)
