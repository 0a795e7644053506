"""Data: tfds ArrayRecord sources (bundled digits, image folders, ImageNet), transforms, grain pipeline."""

from mim_jax.data.pipeline import (
  DatasetInfo,
  dataset_info,
  default_data_config,
  eval_arrays,
  train_dataset,
  train_iterator,
)

__all__ = [
  'DatasetInfo',
  'dataset_info',
  'default_data_config',
  'eval_arrays',
  'train_dataset',
  'train_iterator',
]
