"""``python -m mim_jax.interop.parity FILE.npz ...``: see :mod:`mim_jax.interop.parity`."""

import sys

from mim_jax.interop.parity import main

sys.exit(main())
