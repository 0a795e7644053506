"""The input pipeline the trainer and evaluators call: dataset facts, an endless resumable train iterator,
and in-memory eval arrays.

Train pipeline (grain Dataset API), identical on every host given the same seed:

  ArrayRecord source (all examples of the split)
    -> repeat forever, each epoch globally shuffled (numpy permutation seeded with (seed, epoch))
    -> random_map(record transform), per-record rng from grain, keyed on (seed, global position): by default
       decode + augment -> {'image': uint8 HWC, 'label'}; a method's own transform makes its declared fields
       (two views, a clip, ...; mim_jax/data/batch.py)
    -> host p of N takes block p of each run of N * b consecutive examples (b = the per-host batch), so its
       batch k is rows [p*b, (p+1)*b) of what one host with batch N*b would get: the host count changes nothing
    -> batch(batch_size_per_host, drop_remainder): every field stacked; pixel fields normalized (vectorized numpy,
       each with its own statistics), or left uint8 for callers that normalize on the device
       (`allow_uint8_images=True` and data.normalize_on_device; see data/device.py)
    -> to_iter_dataset (read_threads prepare whole batches ahead) -> mp_prefetch(num_workers) if > 0

Every host runs the same shuffle, so within an epoch the hosts see disjoint examples whose union is the epoch,
and the global batch (hosts' batches stacked in process order, as `sharding.global_batch` does) is the same
array whatever the number of hosts.
The iterator is a `grain.DatasetIterator`: `get_state()`/`set_state()` and `grain.checkpoint.CheckpointSave/
CheckpointRestore` (orbax) restore it exactly, so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import grain
import ml_collections
import numpy as np
from ml_collections import config_dict

from mim_jax.data import batch as batch_lib
from mim_jax.data import device_crop, digits, fashion_mnist, sources, stereo, subsets, transforms
from mim_jax.data.batch import Fields


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  image_shape: tuple[int, int, int]  # (H, W, C) of the images the pipeline yields
  num_train: int
  num_eval: int
  num_classes: int | None
  mean: tuple[float, ...]
  std: tuple[float, ...]
  name: str = ''
  splits: dict[str, int] = dataclasses.field(default_factory=dict)
  interpolation: str = 'bicubic'  # the train crop's resampling filter (what data.resize_on_device reproduces)

  def steps_per_epoch(self, global_batch_size: int) -> int:
    """Optimizer steps in one pass over the train split at this global batch size (drop-remainder)."""
    return max(1, self.num_train // int(global_batch_size))


# Small grayscale datasets mim_jax builds itself: name -> (image size, flips, crop scale). Everything else gets
# MAE's ImageNet presets.
SMALL_DATASETS = {
    digits.NAME: (16, False, (0.6, 1.0)),  # 8x8 digits upsampled; never flip digits
    fashion_mnist.NAME: (28, True, (0.6, 1.0)),  # clothes are mirror-symmetric enough to flip
    stereo.NAME: (64, False, (0.2, 1.0)),  # one real stereo pair; its views come from pairs.kind='stereo'
}


def default_data_config(name: str = digits.NAME) -> ml_collections.ConfigDict:
  """Data config with presets for `name`: light augmentation for the small grayscale datasets (mim_digits,
  fashion_mnist), else MAE's ImageNet settings."""
  small = SMALL_DATASETS.get(name.partition(':')[0])
  c = ml_collections.ConfigDict()
  c.name = name
  # None -> $MIM_JAX_DATA_DIR -> ~/.cache/mim_jax/tensorflow_datasets
  c.data_dir = config_dict.placeholder(str)
  # Where a dataset mim_jax builds offline finds its raw files (fashion_mnist: the four IDX files; None -> Debian's
  # /usr/share/datasets/fashion-mnist). Used only when the dataset is not built yet.
  c.src = config_dict.placeholder(str)
  c.train_split = 'train'
  c.eval_split = 'test' if small else 'validation'
  c.image_key = 'image'
  c.label_key = 'label'
  c.image_size = small[0] if small else 224
  c.channels = config_dict.placeholder(int)  # None -> the dataset's own (1 for digits, 3 for RGB photos)
  # Train augmentation: 'rrc_flip' (RandomResizedCrop [+ flip], MAE/SimMIM pre-training) or 'none' (eval
  # transform).
  c.augment = 'rrc_flip'
  c.crop_scale = small[2] if small else (0.2, 1.0)
  c.crop_ratio = (3 / 4, 4 / 3)
  c.crop_subpixel = bool(small)  # real-valued crop boxes: more distinct crops of tiny images
  c.hflip = small[1] if small else True
  c.interpolation = 'bicubic'
  # 0.875: resize 256 + center crop 224 (scaled with image_size); 1.0: plain resize of square images
  c.eval_crop_pct = 1.0 if small else 0.875
  # JPEG decoding: 'auto' (simplejpeg if installed, else 'pil'), 'simplejpeg', 'simplejpeg_fast' (fast IDCT and
  # chroma upsampling), 'pil' (draft), 'pil_full'.
  c.decoder = 'auto'
  # Pre-training ships uint8 batches and normalizes them on the accelerator (4x fewer bytes to copy and transfer,
  # no per-image float pass on the host); evaluators keep getting float32 from the host either way. None: when
  # jax's default backend is an accelerator (on a CPU-only host XLA's normalize costs more than numpy's).
  c.normalize_on_device = config_dict.placeholder(bool)
  # Throughput on accelerator hosts: the host only decodes the crop's neighbourhood into a uint8 canvas and the
  # accelerator resamples (PIL's filter), flips and normalizes it (mim_jax/data/device_crop.py). 'rrc_flip' only.
  c.resize_on_device = False
  c.device_canvas = config_dict.placeholder(int)  # canvas side; None -> 2 x image_size (rounded up to 8)
  c.mean = config_dict.placeholder(tuple)  # None -> dataset metadata, digits' known values, else ImageNet's
  c.std = config_dict.placeholder(tuple)
  c.cache = 'auto'  # keep raw-array splits (digits) in memory: True / False / 'auto' (<= 256 MiB)
  c.shuffle = True
  c.return_index = False  # also yield 'index' (int64 [b]): each example's position in its split
  c.num_workers = 0  # 0: in-process; >0: grain worker processes (mp_prefetch)
  c.worker_buffer_size = 2  # batches each worker prepares ahead
  # Threads decoding/augmenting records in each process (0: none, fastest for tiny images).
  c.read_threads = 0 if small else 8
  c.prefetch_batches = 2  # batches prepared ahead in each process (at least read_threads)
  return c


# ----------------------------------------------------------------------------------------------------------
# Config checks and dataset facts


def _check_cfg(cfg) -> None:
  def fail(msg):
    raise ValueError(f'bad data config: {msg}')

  if not isinstance(cfg.image_size, int) or cfg.image_size <= 0:
    fail(f'image_size must be a positive int, got {cfg.image_size!r}')
  for key in ('crop_scale', 'crop_ratio'):
    v = cfg.get(key)
    if v is None or len(v) != 2 or not all(isinstance(x, (int, float)) for x in v) or not 0 < v[0] <= v[1]:
      fail(f'{key} must be a pair (min, max) with 0 < min <= max, got {v!r}')
  if cfg.crop_scale[1] > 1:
    fail(f'crop_scale max must be <= 1, got {cfg.crop_scale!r}')
  if not 0 < cfg.eval_crop_pct <= 1:
    fail(f'eval_crop_pct must be in (0, 1], got {cfg.eval_crop_pct!r}')
  if cfg.channels not in (None, 1, 3):
    fail(f'channels must be None, 1 or 3, got {cfg.channels!r}')
  if not isinstance(cfg.num_workers, int) or cfg.num_workers < 0:
    fail(f'num_workers must be an int >= 0, got {cfg.num_workers!r}')
  if cfg.get('augment', 'rrc_flip') not in transforms.augments():
    fail(f'augment must be one of {sorted(transforms.augments())}, got {cfg.augment!r}')
  if cfg.get('normalize_on_device', None) not in (None, True, False):
    fail(f'normalize_on_device must be None (auto), True or False, got {cfg.normalize_on_device!r}')
  if not isinstance(cfg.get('resize_on_device', False), bool):
    fail(f'resize_on_device must be True or False, got {cfg.resize_on_device!r}')
  if cfg.get('decoder', 'auto') not in transforms.DECODERS:
    fail(f'decoder must be one of {transforms.DECODERS}, got {cfg.decoder!r}')
  if cfg.interpolation not in transforms.INTERPOLATIONS:
    fail(f'interpolation must be one of {sorted(transforms.INTERPOLATIONS)}, got {cfg.interpolation!r}')
  for key in ('mean', 'std'):
    v = cfg.get(key)
    if v is not None and (len(v) not in (1, 3) or (key == 'std' and min(v) <= 0)):
      fail(f'{key} must have 1 or 3 entries{" > 0" if key == "std" else ""}, got {v!r}')


def _open(cfg) -> sources.OpenedDataset:
  _check_cfg(cfg)
  return sources.open_dataset(cfg.name, cfg.data_dir, image_key=cfg.get('image_key', 'image'),
                              label_key=cfg.get('label_key', 'label'), src=cfg.get('src', None))


def _channels(cfg, ds: sources.OpenedDataset) -> int:
  if cfg.channels is not None:
    return int(cfg.channels)
  native = ds.image_shape[-1] if ds.image_shape and len(ds.image_shape) == 3 else None
  return 1 if native == 1 else 3


def _mean_std(cfg, ds: sources.OpenedDataset, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
  if cfg.mean is not None and cfg.std is not None:
    mean, std = cfg.mean, cfg.std
  elif 'mean' in ds.metadata and 'std' in ds.metadata:
    mean, std = ds.metadata['mean'], ds.metadata['std']
  elif ds.name.partition(':')[0] == digits.NAME:
    mean, std = digits.MEAN, digits.STD
  else:
    mean, std = sources.IMAGENET_MEAN, sources.IMAGENET_STD
  if cfg.mean is not None:
    mean = cfg.mean
  if cfg.std is not None:
    std = cfg.std

  def fit(v, what):
    v = tuple(float(x) for x in v)
    if len(v) == channels:
      return v
    if len(v) == 1:
      return v * channels
    if channels == 1:  # RGB statistics for grayscale images: luma weights (ITU-R 601, like convert('L')).
      return (0.299 * v[0] + 0.587 * v[1] + 0.114 * v[2],)
    raise ValueError(f'data.{what} has {len(v)} entries but images have {channels} channels')

  return fit(mean, 'mean'), fit(std, 'std')


def _eval_size(ds: sources.OpenedDataset, split: str) -> int:
  """Size of the eval split; 0 (with a warning) for a dataset without it, e.g. converted with --val-fraction 0."""
  try:
    return sources.split_size(ds, split)
  except ValueError as e:
    from absl import logging

    logging.warning('%s; num_eval = 0 (evaluations on it will fail)', e)
    return 0


def dataset_info(data_cfg) -> DatasetInfo:
  """Facts for building the model: shapes after transforms, split sizes, classes, mean/std."""
  ds = _open(data_cfg)
  channels = _channels(data_cfg, ds)
  mean, std = _mean_std(data_cfg, ds, channels)
  return DatasetInfo(
    image_shape=(data_cfg.image_size, data_cfg.image_size, channels),
    num_train=sources.split_size(ds, data_cfg.train_split),
    num_eval=_eval_size(ds, data_cfg.eval_split),
    num_classes=ds.num_classes,
    mean=mean,
    std=std,
    name=data_cfg.name,
    splits=dict(ds.splits),
    interpolation=data_cfg.interpolation,
  )


# ----------------------------------------------------------------------------------------------------------
# Record and batch functions (module-level classes so grain worker processes can unpickle them)


@dataclasses.dataclass(frozen=True)
class RecordSource:
  """What a record transform needs to know about the stored records."""

  image_key: str
  label_key: str | None
  channels: int  # channels of the images the transforms produce (data.channels, else the dataset's)


class ImageRecord:
  """The default record transform: raw tfds record -> {'image': uint8 [H, W, C], 'label': int32} with the given
  image transform (a DeviceCrop returns its canvas and crop parameters instead of 'image' alone)."""

  def __init__(self, transform, image_key: str, label_key: str | None):
    self.transform = transform
    self.image_key = image_key
    self.label_key = label_key

  def __call__(self, record: dict[str, Any], rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    image = self.transform(record[self.image_key], rng)
    label = record[self.label_key] if self.label_key is not None else -1
    out = dict(image) if isinstance(image, dict) else {'image': image}
    out['label'] = np.int32(label)
    return out


def image_record_transform(data_cfg, source: RecordSource, train: bool) -> ImageRecord:
  """The default per-record transform of a split: the train augmentation (``data.augment``) or the eval resize +
  center crop. Methods build their own record transforms from it (two views = two calls of the train one)."""
  build = transforms.build_train_transform if train else transforms.build_eval_transform
  return ImageRecord(build(data_cfg, source.channels), source.image_key, source.label_key)


class _Indexed:
  """Runs a record transform on ``record`` or on ``(index, record)`` (data.return_index), adding 'index'."""

  def __init__(self, fn):
    self.fn = fn

  def __call__(self, record, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    index = None
    if isinstance(record, tuple):  # (source index, record) when data.return_index is set
      index, record = record
    out = dict(self.fn(record, rng))
    if index is not None:
      out['index'] = np.int64(index)
    return out


class _WithIndex:
  def __call__(self, index: int, record: Any) -> tuple[int, Any]:
    return int(index), record


class _EpochShuffle(grain.MapDataset):
  """Endless repetition of `parent`, each epoch in its own seeded random order (numpy permutation per epoch).

  Element i of this dataset is parent[perm_e[i mod n]] with e = i // n and perm_e = permutation from
  `np.random.default_rng([seed, e])`; independent of the host/worker that asks, so all hosts agree on the
  global order. A permutation is computed once per epoch and process (~30 ms for 1.3M examples), which is far
  cheaper per element than a stateless index shuffle.
  """

  def __init__(self, parent: grain.MapDataset, seed: int, shuffle: bool = True):
    super().__init__(parent)
    self._n = len(parent)
    self._seed = int(seed)
    self._shuffle = bool(shuffle)
    self._perms: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f'EpochShuffle(seed={self._seed}, shuffle={self._shuffle})'

  def _perm(self, epoch: int) -> np.ndarray:
    perm = self._perms.get(epoch)
    if perm is None:
      perm = np.random.default_rng([self._seed, epoch]).permutation(self._n)
      if len(self._perms) >= 2:  # Keep the current and the next epoch (workers straddle the boundary).
        for old in sorted(self._perms)[:-1]:
          self._perms.pop(old, None)
      self._perms[epoch] = perm
    return perm

  def index(self, index: int) -> int:
    """The parent index of element `index`."""
    epoch, pos = divmod(int(index), self._n)
    return int(self._perm(epoch)[pos]) if self._shuffle else pos

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self.index(index)]

  def __getstate__(self):
    state = self.__dict__.copy()
    state['_perms'] = {}
    return state


class _HostBlocks(grain.MapDataset):
  """Host `index` of `count`: from each run of `count * block` consecutive elements of `parent`, the `index`-th
  block of `block` elements. With `block` = the per-host batch, host p's batch k holds rows [p*block,
  (p+1)*block) of the batch k one host would draw with batch `count * block`."""

  def __init__(self, parent: grain.MapDataset, block: int, index: int, count: int):
    super().__init__(parent)
    self._block, self._index, self._count = int(block), int(index), int(count)

  def __len__(self) -> int:
    return len(self._parent) // self._count

  def __str__(self) -> str:
    return f'HostBlocks(block={self._block}, index={self._index}, count={self._count})'

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    run, offset = divmod(int(index), self._block)
    return self._parent[(run * self._count + self._index) * self._block + offset]


class _Subset(grain.MapDataset):
  """The elements of `parent` at `indices` (an evaluation subset, mim_jax/data/subsets.py), in that order."""

  def __init__(self, parent: grain.MapDataset, indices: np.ndarray):
    super().__init__(parent)
    self._indices = np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self._indices)

  def __str__(self) -> str:
    return f'Subset({len(self._indices)} of {len(self._parent)})'

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[int(self._indices[index])]


def eval_subset(data_cfg, split: str, max_examples: int | None, seed: int = 0) -> subsets.Subset:
  """The examples of ``split`` an evaluation reads when it may read at most ``max_examples``: the whole split,
  or a seeded sample of it, stratified by label where the split's labels are cheap to read (subsets.py)."""
  ds_info = _open(data_cfg)
  n = sources.split_size(ds_info, split)
  if max_examples is None or int(max_examples) >= n:
    return subsets.sample(n, None, seed)
  labels = sources.split_labels(ds_info, split, data_cfg.get('cache', 'auto'))
  return subsets.sample(n, int(max_examples), seed, labels)


class _Collate:
  """grain batch_fn: a list of per-example dicts -> one dict of batch arrays (every key stacked).

  Pixel fields named in ``normalize`` (``{key: (mean, std)}``) are normalized straight into their slot of a float32
  batch (cache-sized passes, no uint8 stack); everything else is stacked as it is (uint8 pixels that the device
  normalizes, labels, indices, ...).
  """

  def __init__(self, normalize: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] | None = None):
    self.normalize = dict(normalize or {})
    self._normalizers: dict[tuple, transforms.Normalizer] = {}

  def __call__(self, records: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    out = {}
    for key in records[0]:
      if key not in self.normalize:
        out[key] = np.stack([np.asarray(r[key]) for r in records])
        continue
      first = records[0][key]
      array = np.empty((len(records),) + first.shape, np.float32)
      norm = self._normalizers.get((key, first.shape))
      if norm is None:
        mean, std = self.normalize[key]
        norm = self._normalizers[(key, first.shape)] = transforms.Normalizer(mean, std, first.shape)
      for i, r in enumerate(records):
        norm(r[key], out=array[i])
      out[key] = array
    return out


def _read_options(cfg) -> grain.ReadOptions:
  threads = max(0, int(cfg.get('read_threads', 8)))
  return grain.ReadOptions(num_threads=threads,
                           prefetch_buffer_size=max(threads, int(cfg.get('prefetch_batches', 2))))


def _mark_absl_flags_parsed() -> None:
  """grain workers read absl flags; outside absl.app (tests, notebooks) mark them parsed (defaults)."""
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def yields_uint8(data_cfg, allow_uint8_images: bool) -> bool:
  """Whether `train_iterator(data_cfg, ..., allow_uint8_images=...)` yields uint8 images (else float32)."""
  if not allow_uint8_images:
    return False
  if data_cfg.get('resize_on_device', False):
    return True
  setting = data_cfg.get('normalize_on_device', None)
  if setting is None:
    import jax  # only callers that finish batches on the device get here, and they use jax already

    return jax.default_backend() != 'cpu'
  return bool(setting)


def yields_canvases(data_cfg, allow_uint8_images: bool) -> bool:
  """Whether the train batches are uint8 canvases with crop boxes for the device to resample."""
  return bool(allow_uint8_images and data_cfg.get('resize_on_device', False))


def _warn_if_cpu_backend() -> None:
  import jax  # callers that finish batches on the device use jax already
  from absl import logging

  if jax.default_backend() == 'cpu':
    logging.warning('data.resize_on_device with jax on the CPU: XLA resamples the canvases on this CPU, several '
                    'times slower than PIL on the host; it pays off only on an accelerator (docs/data.md)')


RecordTransformFactory = Callable[[Any, RecordSource, bool], Any]


def _custom_record_fn(data_cfg, ds_info: sources.OpenedDataset, channels: int, train: bool,
                      record_transform: RecordTransformFactory | None):
  if record_transform is None:
    return None
  return record_transform(data_cfg, RecordSource(ds_info.image_key, ds_info.label_key, channels), train)


def record_fn_for(data_cfg, ds_info: sources.OpenedDataset, channels: int, train: bool,
                  record_transform: RecordTransformFactory | None):
  """The per-record function of a split: the caller's (a method's ``record_transform(data_cfg, source, train)``),
  or the default image transform when there is none or it returns None."""
  custom = _custom_record_fn(data_cfg, ds_info, channels, train, record_transform)
  if custom is not None:
    return custom
  return image_record_transform(data_cfg, RecordSource(ds_info.image_key, ds_info.label_key, channels), train)


def train_dataset(data_cfg, batch_size_per_host: int, seed: int, process_index: int = 0,
                  process_count: int = 1, *, allow_uint8_images: bool = False, fields: Fields | None = None,
                  record_transform: RecordTransformFactory | None = None,
                  indices: np.ndarray | None = None) -> grain.IterDataset:
  """The train pipeline as a grain IterDataset (see the module docstring); `train_iterator` iterates it.

  ``fields`` / ``record_transform``: the batch a method declares and the per-record transform that makes it
  (``mim_jax.data.batch``); None for both gives the single-image batch {'image', 'label'}. ``indices``: only
  these examples of the split (an evaluation subset, :func:`eval_subset`).
  """
  if not isinstance(batch_size_per_host, (int, np.integer)) or batch_size_per_host <= 0:
    raise ValueError(f'batch_size_per_host must be a positive int, got {batch_size_per_host!r}')
  if not (isinstance(process_count, (int, np.integer)) and process_count >= 1
          and isinstance(process_index, (int, np.integer)) and 0 <= process_index < process_count):
    raise ValueError(f'need 0 <= process_index < process_count, got {process_index!r}, {process_count!r}')
  ds_info = _open(data_cfg)
  channels = _channels(data_cfg, ds_info)
  mean, std = _mean_std(data_cfg, ds_info, channels)
  fields = fields if fields is not None else batch_lib.image_fields((data_cfg.image_size, data_cfg.image_size,
                                                                      channels))
  source = sources.data_source(ds_info, data_cfg.train_split, data_cfg.get('cache', 'auto'))
  n = len(source) if indices is None else len(indices)
  if n < process_count * batch_size_per_host:
    raise ValueError(f'split {data_cfg.train_split!r} of {data_cfg.name!r} has {n} examples, fewer than one '
                     f'global batch ({process_count} hosts x {batch_size_per_host})')
  seed = int(seed)
  ds = grain.MapDataset.source(source)
  if data_cfg.get('return_index', False):
    ds = ds.map_with_index(_WithIndex())
  if indices is not None:
    ds = _Subset(ds, indices)
  ds = _EpochShuffle(ds, seed, shuffle=data_cfg.shuffle)
  canvases = yields_canvases(data_cfg, allow_uint8_images)
  if canvases:
    if record_transform is not None and _custom_record_fn(data_cfg, ds_info, channels, True,
                                                          record_transform) is not None:
      raise ValueError('data.resize_on_device resamples the default single-image crop on the device; this method '
                       'builds its own batches: set --config.data.resize_on_device=False.')
    _warn_if_cpu_backend()
    record_fn = ImageRecord(device_crop.build(data_cfg, channels), ds_info.image_key, ds_info.label_key)
  else:
    record_fn = record_fn_for(data_cfg, ds_info, channels, True, record_transform)
  # Seeded by (seed, global index): the augmentation of an example depends neither on the host count nor on
  # the number of workers, and differs between epochs.
  ds = ds.random_map(_Indexed(record_fn), seed=seed + 1)
  if process_count > 1:
    ds = _HostBlocks(ds, batch_size_per_host, process_index, process_count)
  # Batching the MapDataset (not the IterDataset) makes batches the unit of work for read threads and worker
  # processes: batch k always holds the same examples, whatever num_workers / read_threads are.
  if canvases:
    collate = device_crop.CanvasCollate(record_fn.transform.canvas, channels)
  elif yields_uint8(data_cfg, allow_uint8_images):
    collate = _Collate()
  else:
    collate = _Collate(batch_lib.pixel_stats(fields, mean, std))
  ds = ds.batch(int(batch_size_per_host), drop_remainder=True, batch_fn=collate)
  it = ds.to_iter_dataset(_read_options(data_cfg))
  if data_cfg.num_workers > 0:
    _mark_absl_flags_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(
      num_workers=int(data_cfg.num_workers),
      per_worker_buffer_size=int(data_cfg.get('worker_buffer_size', 2))))
  return it


def train_iterator(data_cfg, batch_size_per_host: int, seed: int, process_index: int = 0,
                   process_count: int = 1, *, allow_uint8_images: bool = False, fields: Fields | None = None,
                   record_transform: RecordTransformFactory | None = None,
                   indices: np.ndarray | None = None) -> grain.DatasetIterator:
  """Endless iterator of this host's batches: by default dict(image=float32 [b, H, W, C] normalized, label=int32
  [b]); with ``fields`` / ``record_transform`` (a method's), every field it declares, pixel fields normalized.

  `allow_uint8_images=True` is for callers that finish the batch on the device with
  `mim_jax.data.device.preprocess(batch, info, fields)`, which returns the float32 batch. With
  data.normalize_on_device the pixel fields then come as uint8 (un-normalized pixels); with data.resize_on_device
  the default image as uint8 canvases plus crop boxes and flips (mim_jax/data/device_crop.py); otherwise nothing
  changes. The examples and augmentations are the same either way. All hosts must pass the same `seed`. The result
  supports `get_state()` / `set_state()` and grain's orbax checkpoint args (`grain.checkpoint.CheckpointSave(it)`
  / `CheckpointRestore(it)`).
  """
  return iter(train_dataset(data_cfg, batch_size_per_host, seed, process_index, process_count,
                            allow_uint8_images=allow_uint8_images, fields=fields, record_transform=record_transform,
                            indices=indices))


def eval_arrays(data_cfg, split: str | None = None, max_examples: int | None = None, *,
                fields: Fields | None = None, record_transform: RecordTransformFactory | None = None,
                train: bool = False, seed: int = 0, subset_seed: int = 0) -> dict[str, np.ndarray]:
  """At most `max_examples` of a split (all when None), eval-transformed and normalized, in memory:
  dict(image=float32 [N, H, W, C], label=int32 [N]) by default, or every field of a method's eval transform. A
  capped split is a seeded, stratified sample (:func:`eval_subset` with ``subset_seed``), never a prefix; the
  examples come in stored order. ``train=True`` applies the train record transform instead, with per-example
  rngs from ``seed`` (the same arrays every time). For small subsets (monitors); whole-split evaluation streams
  instead (eval/streaming).
  """
  ds_info = _open(data_cfg)
  split = data_cfg.eval_split if split is None else split
  channels = _channels(data_cfg, ds_info)
  mean, std = _mean_std(data_cfg, ds_info, channels)
  fields = fields if fields is not None else batch_lib.image_fields((data_cfg.image_size, data_cfg.image_size,
                                                                      channels))
  subset = eval_subset(data_cfg, split, max_examples, subset_seed)
  source = sources.data_source(ds_info, split, data_cfg.get('cache', 'auto'))
  record_fn = _Indexed(record_fn_for(data_cfg, ds_info, channels, train, record_transform))
  ds = grain.MapDataset.source(source)
  if data_cfg.get('return_index', False):
    ds = ds.map_with_index(_WithIndex())
  if subset.indices is not None:
    ds = _Subset(ds, subset.indices)
  ds = ds.random_map(record_fn, seed=int(seed)) if train else ds.map(record_fn)
  ds = ds.batch(256, batch_fn=_Collate(batch_lib.pixel_stats(fields, mean, std)))
  parts = [batch for batch in ds.to_iter_dataset(_read_options(data_cfg))]
  if not parts:  # an empty split: the declared fields with no rows
    return batch_lib.zeros(fields, 0)
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
