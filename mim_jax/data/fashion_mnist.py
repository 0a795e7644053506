"""`fashion_mnist` (Zalando's Fashion-MNIST) as a tfds ArrayRecord dataset, built offline from its four IDX files.

60,000 train / 10,000 test grayscale 28x28 images of ten clothing classes, the same splits, features and class
names as tfds's public `fashion_mnist` builder: `image` uint8 [28, 28, 1] (stored raw, as the bundled digits are:
no codec at this size) and `label` (ClassLabel). Nothing is downloaded: the files come from Debian's package
(`apt-get install dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist/) or from any folder that
holds them (`--config.data.src=DIR`; the dataset's own site serves the same four files). Records are stored in
tfds's hashed key order, so any prefix of a split is a fair sample. The train split's pixel mean/std go into the
metadata (the pipeline's defaults).

For tuning, hold out the seeded validation slice `train[55000:]` (`--config.data.eval_split='train[55000:]'`
with `--config.data.train_split='train[:55000]'`): the stored order is already a seeded shuffle.

`ensure(data_dir, src)` builds it once (under a file lock; tfds writes into a temporary folder renamed when
complete) and returns the dataset directory; missing files are one error naming the package, the files and the
flag, and nothing is written.
"""

from __future__ import annotations

import gzip
import io
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from mim_jax.data.builders import LocalBuilder, build_once

NAME = 'fashion_mnist'
VERSION = '3.0.1'  # the version of tfds's public builder with these splits and features
DEFAULT_SRC = '/usr/share/datasets/fashion-mnist'
FILES = {'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
         'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')}
CLASS_NAMES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
               'Ankle boot')
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049  # IDX: 0x00000803 (ubyte, 3 dims), 0x00000801 (ubyte, 1 dim)


def read_idx(path: str) -> np.ndarray:
  """An IDX file (gzipped or not) as a uint8 array: images [N, rows, cols] or labels [N]."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    data = f.read()
  magic = int.from_bytes(data[:4], 'big')
  if magic not in (IMAGE_MAGIC, LABEL_MAGIC):
    raise ValueError(f'{path} is not an IDX file of unsigned bytes (magic {magic:#010x}).')
  ndim = magic & 0xFF
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if body.size != int(np.prod(shape)):
    raise ValueError(f'{path} is truncated: its header says {shape}, it holds {body.size} values.')
  return body.reshape(shape)


def png_bytes(image: np.ndarray) -> bytes:
  """A grayscale PNG of ``image`` [28, 28, 1] (tfds would encode it with TensorFlow; PIL writes the same pixels)."""
  out = io.BytesIO()
  Image.fromarray(image[..., 0]).save(out, format='PNG')
  return out.getvalue()


def missing_files(src: str) -> list[str]:
  return [name for pair in FILES.values() for name in pair if not os.path.isfile(os.path.join(src, name))]


def check_source(src: str | None) -> str:
  """The folder holding the four IDX files, or one error that says how to get them."""
  src = os.path.abspath(os.path.expanduser(src or DEFAULT_SRC))
  missing = missing_files(src)
  if missing:
    raise FileNotFoundError(
        f'Fashion-MNIST is not built yet and its files are missing from {src} ({", ".join(missing)}): install '
        "Debian's package (apt-get install dataset-fashion-mnist, which puts the four files in "
        f'{DEFAULT_SRC}), or download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, '
        't10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from the dataset\'s site into a folder and pass '
        '--config.data.src=FOLDER.')
  return src


def load_arrays(src: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """``{split: (images uint8 [N, 28, 28, 1], labels int64 [N])}`` from the IDX files in ``src``."""
  out = {}
  for split, (image_file, label_file) in FILES.items():
    images = read_idx(os.path.join(src, image_file))
    labels = read_idx(os.path.join(src, label_file)).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels) or labels.max(initial=0) >= len(CLASS_NAMES):
      raise ValueError(f'{src}: {image_file} holds {images.shape} images and {label_file} {labels.shape} labels '
                       f'(values up to {labels.max(initial=0)}); expected [N, 28, 28] and N labels 0-9.')
    out[split] = (images[..., None], labels)
  return out


class FashionMnist(LocalBuilder, skip_registration=True):
  """Fashion-MNIST from its IDX files (see the module docstring)."""

  name = NAME
  VERSION = tfds.core.Version(VERSION)

  def __init__(self, *, src: str, **kwargs):
    self._arrays = load_arrays(src)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    images = self._arrays['train'][0].astype(np.float64) / 255.0 if hasattr(self, '_arrays') else None
    metadata = {} if images is None else {'mean': [round(float(images.mean()), 5)],
                                          'std': [round(float(images.std()), 5)]}
    return tfds.core.DatasetInfo(
        builder=self,
        description='Fashion-MNIST (Zalando Research): 70,000 28x28 grayscale images of 10 clothing classes.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(28, 28, 1)),  # PNG, as in tfds's own fashion_mnist
            'label': tfds.features.ClassLabel(names=list(CLASS_NAMES)),
        }),
        supervised_keys=('image', 'label'),
        metadata=tfds.core.MetadataDict(metadata),
        homepage='https://github.com/zalandoresearch/fashion-mnist',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the files are local
    return {split: self._generate_examples(split) for split in FILES}

  def _generate_examples(self, split):
    images, labels = self._arrays[split]
    for i in range(len(labels)):
      yield i, {'image': png_bytes(images[i]), 'label': int(labels[i])}


def dataset_dir(data_dir: str) -> str:
  return os.path.join(data_dir, NAME, VERSION)


def is_prepared(data_dir: str) -> bool:
  return os.path.exists(os.path.join(dataset_dir(data_dir), 'dataset_info.json'))


def ensure(data_dir: str, src: str | None = None) -> str:
  """Builds `fashion_mnist` under `data_dir` from the IDX files in `src` unless it is there; returns its dir."""
  if is_prepared(data_dir):
    return dataset_dir(data_dir)
  src = check_source(src)  # before anything is written
  return build_once(data_dir, NAME, VERSION,
                    lambda: FashionMnist(src=src, data_dir=data_dir, file_format='array_record'))
