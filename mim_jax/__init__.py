"""mim_jax: masked-image-modeling pre-training in JAX/Flax."""

__version__ = '0.1.0'

__all__ = ['features']


def __getattr__(name: str):
  # `mim_jax.features(checkpoint, images)` (mim_jax/interop/features.py), imported on first use so that
  # `import mim_jax` stays light (no jax until something runs).
  if name == 'features':
    from mim_jax.interop.features import features

    return features
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
