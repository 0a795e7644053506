"""Finding and opening prepared tfds ArrayRecord datasets without TensorFlow.

A dataset is named like tfds names them: `name`, `name/config` or either with `:version`. It is looked up
under the data dir (config `data_dir`, else env `MIM_JAX_DATA_DIR`, else
`~/.cache/mim_jax/tensorflow_datasets`) as `DATA_DIR/name[/config]/<version>/` and opened from its files with
`tfds.builder_from_directory`, so it needs neither the builder's code nor the network. The bundled
`mim_digits` is built on first use.

Image features stored as encoded bytes (`tfds.features.Image`) are read undecoded (`SkipDecoding`), so the
pipeline decodes them itself with PIL (at reduced size when the crop allows it); uint8 `Tensor` images are
read as arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import re
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from mim_jax.data import digits, fashion_mnist, lidar, scenes25d, shapes3d, stereo

ENV_DATA_DIR = 'MIM_JAX_DATA_DIR'
DEFAULT_DATA_DIR = os.path.join('~', '.cache', 'mim_jax', 'tensorflow_datasets')
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PREPARE_HINT = (
  'prepare it with `python -m mim_jax.data.prepare --src IMAGE_FOLDER --out {data_dir} --name {name}` '
  '(see docs/data.md; for ImageNet use launch/prepare_imagenet.sh), or point data_dir / $' + ENV_DATA_DIR
  + ' at the folder that holds it'
)


def resolve_data_dir(data_dir: str | None = None) -> str:
  """Config value, else $MIM_JAX_DATA_DIR, else ~/.cache/mim_jax/tensorflow_datasets (as an absolute path)."""
  path = data_dir or os.environ.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR
  return os.path.abspath(os.path.expanduser(str(path)))


def _version_key(v: str) -> tuple[int, ...]:
  return tuple(int(x) for x in v.split('.'))


def find_dataset_dir(name: str, data_dir: str | None = None, src: str | None = None) -> str:
  """Returns `DATA_DIR/name[/config]/version` of a prepared dataset, building the ones mim_jax builds offline if
  needed: the bundled digits, and Fashion-MNIST from its IDX files in `src` (data.src; Debian's folder)."""
  root = resolve_data_dir(data_dir)
  if not name or not isinstance(name, str):
    raise ValueError(f'data.name must be a non-empty dataset name, got {name!r}')
  base, _, version = name.partition(':')
  if base == digits.NAME and version in ('', digits.VERSION):
    return digits.ensure_digits(root)
  if base == fashion_mnist.NAME and version in ('', fashion_mnist.VERSION):
    return fashion_mnist.ensure(root, src)
  if base == stereo.NAME and version in ('', stereo.VERSION):
    return stereo.ensure(root)
  if base == shapes3d.NAME and version in ('', shapes3d.VERSION):
    return shapes3d.ensure(root)
  if base == lidar.NAME and version in ('', lidar.VERSION):
    return lidar.ensure(root)
  if base == scenes25d.NAME and version in ('', scenes25d.VERSION):
    return scenes25d.ensure(root)
  ds_root = os.path.join(root, *base.split('/'))
  if not os.path.isdir(root):
    raise FileNotFoundError(
      f'dataset {name!r} not found: data dir {root} does not exist; '
      + PREPARE_HINT.format(data_dir=root, name=base)
    )
  if version:
    candidates = [version]
  else:
    candidates = []
    if os.path.isdir(ds_root):
      candidates = sorted(
        (v for v in os.listdir(ds_root) if re.fullmatch(r'\d+\.\d+\.\d+', v)), key=_version_key, reverse=True
      )
  for v in candidates:
    path = os.path.join(ds_root, v)
    if os.path.exists(os.path.join(path, 'dataset_info.json')):
      return path
  found = sorted(d for d in os.listdir(root)
                 if not d.startswith('.') and os.path.isdir(os.path.join(root, d)))
  raise FileNotFoundError(
    f'dataset {name!r} not found under {root} (no {base}/<version>/dataset_info.json'
    + (f' for version {version}' if version else '')
    + f'; datasets there: {found or "none"}); '
    + PREPARE_HINT.format(data_dir=root, name=base)
  )


@dataclasses.dataclass(frozen=True)
class OpenedDataset:
  """What the pipeline needs to know about a prepared dataset."""

  path: str
  name: str
  splits: dict[str, int]  # split name -> number of examples
  image_key: str
  label_key: str | None
  image_encoded: bool  # True: records hold encoded bytes (JPEG/PNG); False: uint8 arrays
  image_shape: tuple[Any, ...] | None  # stored shape, None entries for variable sizes
  num_classes: int | None
  metadata: dict[str, Any]
  split_bytes: dict[str, int] = dataclasses.field(default_factory=dict)  # split name -> stored bytes (0: unknown)


@functools.lru_cache(maxsize=64)
def _builder(path: str):
  return tfds.builder_from_directory(path)


def open_dataset(name: str, data_dir: str | None = None, image_key: str = 'image',
                 label_key: str | None = 'label', src: str | None = None) -> OpenedDataset:
  path = find_dataset_dir(name, data_dir, src)
  builder = _builder(path)
  info = builder.info
  file_format = str(getattr(info.file_format, 'value', info.file_format) or '')
  if file_format and 'array_record' not in file_format:
    raise ValueError(
      f'dataset {name!r} at {path} is stored as {file_format}, which needs TensorFlow to read. Convert it '
      'to ArrayRecord once: see docs/data.md, "ImageNet from tfds TFRecords" (launch/prepare_imagenet.sh).'
    )
  features = info.features
  if image_key not in features:
    raise KeyError(f'dataset {name!r} has no feature {image_key!r} (features: {list(features.keys())}); '
                   'set data.image_key')
  image_feature = features[image_key]
  if isinstance(image_feature, tfds.features.Image):
    encoded = True
  elif isinstance(image_feature, tfds.features.Tensor) and np.dtype(image_feature.np_dtype) == np.uint8:
    encoded = False
  elif isinstance(image_feature, tfds.features.Tensor) and image_key != 'image':
    encoded = False  # a non-image record field (point clouds): read by a method's own record transform
  else:
    raise TypeError(f'feature {image_key!r} of {name!r} is {type(image_feature).__name__}; expected an Image '
                    'feature (encoded bytes) or a uint8 Tensor [H, W, C]')
  num_classes = None
  if label_key is not None and label_key in features:
    label_feature = features[label_key]
    num_classes = getattr(label_feature, 'num_classes', None)
  else:
    label_key = None
  metadata = dict(info.metadata) if info.metadata else {}
  # A dataset may present each stored record several times per split (metadata 'repeat': {split: times}): the
  # bundled stereo pair is one record whose views are drawn anew at every read (mim_jax/data/stereo.py).
  repeat = {k: int(v) for k, v in (metadata.get('repeat') or {}).items()}
  splits = {k: int(v.num_examples) * repeat.get(k, 1) for k, v in info.splits.items()}
  split_bytes = {k: int(getattr(v, 'num_bytes', 0) or 0) for k, v in info.splits.items()}
  return OpenedDataset(
    path=path, name=name, splits=splits, image_key=image_key, label_key=label_key, image_encoded=encoded,
    image_shape=tuple(image_feature.shape), num_classes=num_classes, metadata=metadata, split_bytes=split_bytes,
  )


def check_split(ds: OpenedDataset, split: str) -> None:
  if not isinstance(split, str) or not split:
    raise ValueError(f'split must be a non-empty string, got {split!r}')
  base = re.split(r'[\[+]', split, maxsplit=1)[0]
  if base not in ds.splits:
    raise ValueError(f'split {split!r} does not exist in dataset {ds.name!r} ({ds.path}); available splits: '
                     f'{sorted(ds.splits)}')


def _skip_image_decoding(ds: OpenedDataset):
  return {ds.image_key: tfds.decode.SkipDecoding()} if ds.image_encoded else None


def split_size(ds: OpenedDataset, split: str) -> int:
  """Examples of ``split``: a stored split, or a tfds slice of one (``train[:55000]``, ``train[90%:]``)."""
  check_split(ds, split)
  if split in ds.splits:
    return ds.splits[split]
  return len(_builder(ds.path).as_data_source(split=split, decoders=_skip_image_decoding(ds)))


class RepeatedSource:
  """Each record of ``source`` ``times`` times in a row: index i reads record ``i // times``."""

  def __init__(self, source, times: int):
    self.source, self.times = source, int(times)

  def __len__(self) -> int:
    return len(self.source) * self.times

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self.source[int(index) // self.times]

  def __getitems__(self, indices) -> list[dict[str, Any]]:
    return [self[i] for i in indices]


class InMemorySource:
  """A split of raw-array records held in numpy arrays (small datasets: ~1 µs per record, not ~90 µs)."""

  def __init__(self, columns: dict[str, np.ndarray]):
    self.columns = columns
    self._len = len(next(iter(columns.values())))

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {k: v[index] for k, v in self.columns.items()}

  def __getitems__(self, indices) -> list[dict[str, Any]]:
    return [self[i] for i in indices]

  def __repr__(self) -> str:
    return f'InMemorySource(len={self._len}, columns={list(self.columns)})'


# Splits of uint8-array datasets up to this many bytes are loaded into memory once when `cache='auto'`.
AUTO_CACHE_BYTES = 256 * 2**20


def _load_columns(source, keys: list[str]) -> dict[str, np.ndarray]:
  n = len(source)
  cols = {k: [] for k in keys}
  for start in range(0, n, 4096):
    for rec in source.__getitems__(list(range(start, min(n, start + 4096)))):
      for k in keys:
        cols[k].append(rec[k])
  return {k: np.stack([np.asarray(x) for x in v]) for k, v in cols.items()}


def _decode(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
  from PIL import Image

  with Image.open(io.BytesIO(data)) as img:
    array = np.asarray(img)
  return array.reshape(shape)


@functools.lru_cache(maxsize=16)
def _cached_columns(path: str, split: str, keys: tuple[str, ...], encoded_key: str | None = None,
                    shape: tuple[int, ...] | None = None) -> dict[str, np.ndarray]:
  """A split's columns in memory; ``encoded_key``'s images (PNG/JPEG bytes of one fixed ``shape``) are decoded
  once here rather than at every read."""
  decoders = {encoded_key: tfds.decode.SkipDecoding()} if encoded_key else None
  columns = _load_columns(_builder(path).as_data_source(split=split, decoders=decoders), list(keys))
  if encoded_key:
    columns[encoded_key] = np.stack([_decode(bytes(b), shape) for b in columns[encoded_key]])
  return columns


def data_source(ds: OpenedDataset, split: str, cache: bool | str = 'auto'):
  """A random-access source (len, __getitem__, __getitems__) of raw records for `split`.

  `cache`: True loads the split into memory, False never, 'auto' when the split's pixels take at most
  AUTO_CACHE_BYTES. Only images of one fixed shape are cached: raw arrays as they are, encoded ones (Fashion-MNIST's
  PNGs) decoded once.
  """
  check_split(ds, split)
  if cache not in (True, False, 'auto'):
    raise ValueError(f"data.cache must be True, False or 'auto', got {cache!r}")
  times = int((ds.metadata.get('repeat') or {}).get(split, 1))
  source = _stored_source(ds, split, cache, split_size(ds, split) // times)
  return RepeatedSource(source, times) if times > 1 else source


def _stored_source(ds: OpenedDataset, split: str, cache: bool | str, num_stored: int):
  """The split's stored records (``num_stored`` of them), in memory when small enough."""
  fixed_shape = bool(ds.image_shape) and all(ds.image_shape)
  if cache and fixed_shape:
    num_bytes = num_stored * int(np.prod(ds.image_shape))
    if cache is True or 0 < num_bytes <= AUTO_CACHE_BYTES:
      keys = tuple(k for k in (ds.image_key, ds.label_key) if k is not None)
      # other fixed-shape array features travel with the record (a stereo pair's right image and disparity)
      keys += tuple(k for k, f in _builder(ds.path).info.features.items()
                    if k not in keys and type(f) is tfds.features.Tensor and all(d is not None for d in f.shape))
      encoded = ds.image_key if ds.image_encoded else None
      return InMemorySource(_cached_columns(ds.path, split, keys, encoded, tuple(ds.image_shape)))
  return _builder(ds.path).as_data_source(split=split, decoders=_skip_image_decoding(ds))


# A split's labels are read (for stratified evaluation subsets) when its records take at most this many bytes;
# larger splits (ImageNet's 140 GB) are sampled uniformly instead of read end to end.
LABEL_SCAN_BYTES = 512 * 2**20


@functools.lru_cache(maxsize=16)
def _split_labels(path: str, split: str, label_key: str) -> np.ndarray:
  decoders = {k: tfds.decode.SkipDecoding() for k, f in _builder(path).info.features.items()
              if isinstance(f, tfds.features.Image)}
  return _load_columns(_builder(path).as_data_source(split=split, decoders=decoders), [label_key])[label_key]


def split_labels(ds: OpenedDataset, split: str, cache: bool | str = 'auto') -> np.ndarray | None:
  """Every label of ``split`` in stored order where that is cheap (an in-memory split, or one of at most
  ``LABEL_SCAN_BYTES``), else None; None for unlabelled datasets."""
  if ds.label_key is None:
    return None
  source = data_source(ds, split, cache)
  if isinstance(source, InMemorySource) and ds.label_key in source.columns:
    return source.columns[ds.label_key]
  if not 0 < ds.split_bytes.get(split, 0) <= LABEL_SCAN_BYTES:
    return None
  return _split_labels(ds.path, split, ds.label_key)
