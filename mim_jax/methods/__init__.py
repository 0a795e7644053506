"""Pre-training methods. Importing this package registers the built-in ones."""

from mim_jax.methods import hpm, mae, simmim  # noqa: F401
from mim_jax.methods.base import Method, build, method_names, register

__all__ = ['Method', 'build', 'method_names', 'register']
