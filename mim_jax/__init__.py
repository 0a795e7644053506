"""mim_jax: masked-image-modeling pre-training in JAX/Flax."""

__version__ = '0.1.0'
