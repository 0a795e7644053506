"""The bundled `mim_stereo` dataset: one real rectified stereo pair, as tfds ArrayRecord, for two-view pre-training
and held-out cross-view checks on real geometry.

scikit-image ships Middlebury's motorcycle pair with its disparity map (`skimage.data.stereo_motorcycle()`: left and
right uint8 [500, 741, 3], disparity float32 in pixels, inf where unknown; no download). Both splits hold the whole
pair; they differ in `x_range`, the columns where a window of the *left* image may lie: `train` the left 2/3
(x < 494), `test` the rest, so held-out windows never show the same left pixels as training ones. The record
transform (`mim_jax.data.pairs.StereoPair`, `pairs.kind='stereo'`) cuts a left window and the right window shifted
by its median disparity. Each split's record is presented ``REPEAT[split]`` times (one "epoch" of windows, each
drawn with its own generator). There are no labels (label -1).

`ensure(data_dir)` builds it once under a file lock (scikit-image must be installed).
"""

from __future__ import annotations


import numpy as np
import tensorflow_datasets as tfds

from mim_jax.data.builders import LocalBuilder, build_once

NAME = 'mim_stereo'
VERSION = '1.0.0'
SHAPE = (500, 741, 3)
TRAIN_COLUMNS = 494  # left-window x < 494 for train, >= 494 for test
# Each split is its one record read this many times (dataset metadata 'repeat', mim_jax.data.sources): an epoch
# of windows, each drawn anew from the record's generator.
REPEAT = {'train': 4096, 'test': 1024}


class MimStereo(LocalBuilder):
  """scikit-image's motorcycle stereo pair (left, right, disparity), train/test by left-window columns."""

  VERSION = tfds.core.Version(VERSION)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description="scikit-image's stereo_motorcycle(): a rectified Middlebury stereo pair with its disparity map.",
      features=tfds.features.FeaturesDict({
        'image': tfds.features.Tensor(shape=SHAPE, dtype=np.uint8),  # left
        'image_right': tfds.features.Tensor(shape=SHAPE, dtype=np.uint8),
        'disparity': tfds.features.Tensor(shape=SHAPE[:2], dtype=np.float32),
        'x_range': tfds.features.Tensor(shape=(2,), dtype=np.int32),
      }),
      metadata=tfds.core.MetadataDict({'repeat': dict(REPEAT)}),
      homepage='https://scikit-image.org/docs/stable/api/skimage.data.html#skimage.data.stereo_motorcycle',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the pair ships with scikit-image
    from mim_jax.data.pairs import stereo_motorcycle

    left, right, disparity = stereo_motorcycle()
    ranges = {'train': (0, TRAIN_COLUMNS), 'test': (TRAIN_COLUMNS, SHAPE[1])}
    return {split: self._generate_examples(left, right, disparity, r) for split, r in ranges.items()}

  def _generate_examples(self, left, right, disparity, x_range):
    yield 0, {'image': left, 'image_right': right, 'disparity': disparity.astype(np.float32),
              'x_range': np.asarray(x_range, np.int32)}


def ensure(data_dir: str) -> str:
  """Builds `mim_stereo` under `data_dir` unless it is there; returns its dataset directory."""
  return build_once(data_dir, NAME, VERSION, lambda: MimStereo(data_dir=data_dir, file_format='array_record'))
