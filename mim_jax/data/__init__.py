"""Data: tfds ArrayRecord sources (bundled digits, image folders, ImageNet), transforms, grain pipeline.

The pipeline names are imported lazily so that light modules (the folder converter's worker processes) do not
pay for importing grain and tensorflow_datasets.
"""

import importlib

_PIPELINE_NAMES = ('DatasetInfo', 'dataset_info', 'default_data_config', 'eval_arrays', 'train_dataset',
                   'train_iterator')

__all__ = list(_PIPELINE_NAMES)


def __getattr__(name):
  if name in _PIPELINE_NAMES:
    return getattr(importlib.import_module('mim_jax.data.pipeline'), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
