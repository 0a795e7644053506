"""The bundled `mim_digits` dataset: scikit-learn's 1797 real 8x8 handwritten digits, as tfds ArrayRecord.

The images come from `sklearn.datasets.load_digits()` (shipped inside scikit-learn, so building never touches
the network). Values 0..16 are rescaled to uint8 0..255 and stored raw as a `[8, 8, 1]` uint8 tensor (no image
codec: at this size decoding would cost more than the pixels). The split is fixed: 1437 train / 360 test,
stratified by label with a fixed seed, so every machine builds byte-identical data.

`ensure_digits(data_dir)` builds the dataset once (under a file lock, so racing processes build it only once;
tfds itself writes into an `incomplete.*` folder and renames it when complete) and returns the dataset
directory.
"""

from __future__ import annotations


import numpy as np
import tensorflow_datasets as tfds

from mim_jax.data.builders import LocalBuilder, build_once

NAME = 'mim_digits'
VERSION = '1.0.0'
NUM_TEST = 360
SPLIT_SEED = 0
# Per-channel mean/std of the train split in [0, 1] units (computed once from the stored uint8 pixels).
MEAN = (0.3054,)
STD = (0.3760,)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
  """Returns (images uint8 [N, 8, 8, 1], labels int64 [N], {split: indices})."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int64)
  train_idx, test_idx = train_test_split(
    np.arange(len(labels)), test_size=NUM_TEST, stratify=labels, random_state=SPLIT_SEED
  )
  return images, labels, {'train': np.sort(train_idx), 'test': np.sort(test_idx)}


class MimDigits(LocalBuilder):
  """scikit-learn digits (8x8 grayscale, 10 classes), fixed stratified 1437/360 split."""

  VERSION = tfds.core.Version(VERSION)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description='scikit-learn load_digits(): 1797 8x8 grayscale handwritten digits as uint8 0..255.',
      features=tfds.features.FeaturesDict({
        'image': tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
        'label': tfds.features.ClassLabel(num_classes=10),
      }),
      supervised_keys=('image', 'label'),
      homepage='https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data ships with scikit-learn.
    images, labels, splits = _digits_arrays()
    return {name: self._generate_examples(images, labels, idx) for name, idx in splits.items()}

  def _generate_examples(self, images, labels, indices):
    for i in indices:
      yield int(i), {'image': images[i], 'label': int(labels[i])}


def ensure_digits(data_dir: str) -> str:
  """Builds `mim_digits` under `data_dir` unless it is already there; returns its dataset directory."""
  return build_once(data_dir, NAME, VERSION, lambda: MimDigits(data_dir=data_dir, file_format='array_record'))
