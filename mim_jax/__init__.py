"""mim_jax: masked-image-modeling pre-training in JAX/Flax."""

__version__ = '0.1.0'

# `mim_jax.features(checkpoint, images)`: the function, bound over the submodule of the same name (which keeps its
# heavy imports inside the call, so importing mim_jax stays light).
from mim_jax.features import features  # noqa: E402

__all__ = ['features']
