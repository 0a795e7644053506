"""Image folder -> tfds ArrayRecord dataset, without TensorFlow.

    python -m mim_jax.data.prepare --src DIR --out DATA_DIR [--name NAME] [--val-fraction 0.05]

Layouts of `--src` (detected automatically):
  * `DIR/train/<class>/...` and `DIR/val/<class>/...` (or `validation/`): the two splits as given, labelled by
    class folder (ImageNet after `launch/prepare_imagenet.sh` has sorted the validation images);
  * `DIR/<class>/...`: labelled by first-level folder; `--val-fraction` of each class (seeded) becomes
    `validation`;
  * `DIR/...` with no class folders, or `--unlabelled`: every image anywhere below DIR, unlabelled (label -1
    in the pipeline), with a seeded random `validation` fraction.

Every file is fully decoded once in a pool of worker processes (with a progress bar): files PIL cannot
identify, unreadable, corrupt or truncated files are skipped and listed with the reason in
`DATA_DIR/NAME_prepare_report.json` (and summarized on stdout) instead of stopping the run. JPEG RGB files are
stored byte for byte; anything else (grayscale, CMYK, RGBA/LA/palette with transparency composited on white,
PNG/GIF/BMP/WebP/TIFF, `--max-size` downscales) is converted to RGB and re-encoded as JPEG (`--quality`). Tiny
images are kept (the pipeline upsamples them) and counted in the report.

The result is read with `tfds.data_source(NAME, data_dir=DATA_DIR)` or the pipeline (`data.name=NAME`,
`data.data_dir=DATA_DIR`). Features: `image` (JPEG, decoded by the pipeline with PIL), `label` (ClassLabel,
when labelled), `file_name` (path relative to --src). The train-split mean/std (estimated on 16x16 thumbnails)
are stored in the dataset metadata and used by the pipeline unless the config sets them (`--stats imagenet`
stores none, so the standard ImageNet constants apply).

Each split is stored in a seeded random order (`--seed`), not in the sorted order of the folder tree, so that
any prefix of a split is a fair sample of its classes; the same seed writes the same bytes.

Re-running is idempotent: an existing dataset built from the same files (same paths, sizes and mtimes) is left
as it is; if the source changed, it says so and `--overwrite` rebuilds. Concurrent runs on the same output are
serialized by a lock file, and tfds writes into a temporary folder that is renamed when complete.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageFile

DEFAULT_VERSION = '1.0.0'
VAL_DIR_NAMES = ('val', 'validation')
SYSTEM_FILES = {'thumbs.db', 'desktop.ini'}
SMALL_SIDE = 32  # images with a shorter side below this are kept but counted as "tiny" in the report


@dataclasses.dataclass(frozen=True)
class Options:
  quality: int = 95
  max_size: int = 0  # shorter side larger than this is downscaled (0: keep)
  min_size: int = 1  # shorter side smaller than this is skipped
  compute_stats: bool = True


@dataclasses.dataclass
class Scan:
  """Files per split: split -> [(relative path, label or -1)]; plus class names and pre-skipped files."""

  splits: dict[str, list[tuple[str, int]]]
  class_names: list[str] | None
  skipped: list[tuple[str, str]]  # (relative path, reason) found while scanning (hidden/system files, strays)
  layout: str


# ----------------------------------------------------------------------------------------------------------
# Scanning the folder tree


def _is_hidden(name: str) -> bool:
  return name.startswith('.') or name.lower() in SYSTEM_FILES


def _walk_files(root: str, rel_base: str, skipped: list[tuple[str, str]]) -> list[str]:
  """Regular files below `root` as sorted paths relative to the source root; hidden ones go to `skipped`."""
  out = []
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
    for f in sorted(filenames):
      rel = os.path.normpath(os.path.join(rel_base, os.path.relpath(os.path.join(dirpath, f), root)))
      if _is_hidden(f):
        skipped.append((rel, 'hidden or system file'))
      elif not os.path.exists(os.path.join(dirpath, f)):
        skipped.append((rel, 'broken link: its target does not exist'))
      else:
        out.append(rel)
  return sorted(out)


def _class_folders(path: str) -> list[str]:
  return sorted(d for d in os.listdir(path) if not d.startswith('.') and os.path.isdir(os.path.join(path, d)))


def _labelled(src: str, sub: str, class_names: list[str], skipped) -> list[tuple[str, int]]:
  base = os.path.join(src, sub) if sub else src
  items = []
  index = {c: i for i, c in enumerate(class_names)}
  for entry in sorted(os.listdir(base)):
    full = os.path.join(base, entry)
    rel = os.path.normpath(os.path.join(sub, entry)) if sub else entry
    if entry.startswith('.'):
      if os.path.isfile(full):
        skipped.append((rel, 'hidden or system file'))
      continue
    if os.path.isfile(full):
      skipped.append((rel, 'file outside any class folder'))
      continue
    if entry not in index:
      skipped.append((rel + '/', 'class folder not present in the train split'))
      continue
    items.extend((f, index[entry]) for f in _walk_files(full, rel, skipped))
  return items


def _random_val_split(items: list[tuple[str, int]], val_fraction: float, seed: int, stratify: bool):
  rng = np.random.default_rng(seed)
  if val_fraction <= 0:
    return items, []
  groups: dict[int, list[int]] = {}
  for i, (_, label) in enumerate(items):
    groups.setdefault(label if stratify else 0, []).append(i)
  val = set()
  for idx in groups.values():
    k = int(round(len(idx) * val_fraction))
    if k == 0 and len(idx) >= 2 and rng.random() < len(idx) * val_fraction:
      k = 1
    k = min(k, len(idx) - 1) if len(idx) > 1 else 0
    val.update(rng.permutation(idx)[:k].tolist())
  train = [x for i, x in enumerate(items) if i not in val]
  validation = [x for i, x in enumerate(items) if i in val]
  return train, validation


def _stored_order(splits: dict[str, list[tuple[str, int]]], seed: int) -> dict[str, list[tuple[str, int]]]:
  """Each split in a seeded random order (the order the records are written in): a class-folder tree walked in
  sorted order would otherwise be stored class by class, and any prefix of it would hold only the first classes.
  Deterministic for a seed, so a rebuild writes the same bytes."""
  out = {}
  for split, items in splits.items():
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    out[split] = [items[i] for i in rng.permutation(len(items))]
  return out


def scan(src: str, val_fraction: float = 0.05, seed: int = 0, unlabelled: bool = False) -> Scan:
  """Finds the images of each split and the class names under `src` (see the module docstring for layouts); each
  split's files come in the seeded order they will be stored in."""
  scanned = _scan(src, val_fraction, seed, unlabelled)
  return dataclasses.replace(scanned, splits=_stored_order(scanned.splits, seed))


def _scan(src: str, val_fraction: float, seed: int, unlabelled: bool) -> Scan:
  if not os.path.isdir(src):
    raise FileNotFoundError(f'--src {src} is not a directory')
  if not 0 <= val_fraction < 1:
    raise ValueError(f'--val-fraction must be in [0, 1), got {val_fraction}')
  skipped: list[tuple[str, str]] = []
  top = _class_folders(src)
  val_dir = next((d for d in VAL_DIR_NAMES if d in top), None)
  if not unlabelled and 'train' in top and val_dir is not None:
    train_root = os.path.join(src, 'train')
    class_names = _class_folders(train_root)
    if class_names:
      splits = {'train': _labelled(src, 'train', class_names, skipped),
                'validation': _labelled(src, val_dir, class_names, skipped)}
      for entry in sorted(set(os.listdir(src)) - {'train', val_dir}):
        if not entry.startswith('.'):
          skipped.append((entry, 'not under train/ or ' + val_dir + '/'))
      return Scan(splits, class_names, skipped, f'train/ + {val_dir}/ with class folders')
    # train/ and val/ without class folders: unlabelled given splits.
    splits = {'train': [(f, -1) for f in _walk_files(train_root, 'train', skipped)],
              'validation': [(f, -1) for f in _walk_files(os.path.join(src, val_dir), val_dir, skipped)]}
    return Scan(splits, None, skipped, f'train/ + {val_dir}/ unlabelled')
  if not unlabelled and top:
    items = _labelled(src, '', top, skipped)
    train, validation = _random_val_split(items, val_fraction, seed, stratify=True)
    return Scan({'train': train, 'validation': validation}, top, skipped, 'class folders')
  items = [(f, -1) for f in _walk_files(src, '', skipped)]
  train, validation = _random_val_split(items, val_fraction, seed, stratify=False)
  return Scan({'train': train, 'validation': validation}, None, skipped, 'unlabelled (flat)')


def fingerprint(src: str, scanned: Scan, options: Options, val_fraction: float, seed: int) -> str:
  """Hash of the file list (paths, sizes, mtimes), the split assignment and the options."""
  h = hashlib.sha256()
  h.update(json.dumps([dataclasses.asdict(options), val_fraction, seed, scanned.class_names]).encode())
  for split in sorted(scanned.splits):
    for rel, label in sorted(scanned.splits[split]):  # the files, not their stored order (same for any order)
      st = os.stat(os.path.join(src, rel))
      h.update(f'{split}\0{rel}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
  return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Checking and converting one file (runs in worker processes)


def _to_rgb(img: Image.Image) -> Image.Image:
  if img.mode == 'RGB':
    return img
  if img.mode in ('RGBA', 'LA', 'PA') or (img.mode == 'P' and 'transparency' in img.info):
    rgba = img.convert('RGBA')
    background = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert('RGB')
  if img.mode in ('I;16', 'I;16B', 'I;16L', 'I'):  # 16/32-bit grayscale: scale to 8 bits
    arr = np.asarray(img, dtype=np.float64)
    hi = arr.max() if arr.size else 1
    arr = np.clip(arr * (255.0 / (65535.0 if hi > 255 else 255.0)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr).convert('RGB')
  return img.convert('RGB')


def process_file(path: str, options: Options) -> dict[str, Any]:
  """Decodes `path` fully; returns {'ok': True, 'jpeg': bytes, ...} or {'ok': False, 'reason': str}."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    return {'ok': False, 'reason': f'unreadable: {e.strerror or e}'}
  if not data:
    return {'ok': False, 'reason': 'empty file'}
  ImageFile.LOAD_TRUNCATED_IMAGES = False
  try:
    img = Image.open(io.BytesIO(data))
    fmt, mode = img.format, img.mode
    img.load()  # full decode: catches truncated and corrupt files
  except Image.DecompressionBombError as e:
    return {'ok': False, 'reason': f'too large to decode safely: {e}'}
  except Image.UnidentifiedImageError:
    return {'ok': False, 'reason': 'not an image (PIL cannot identify it)'}
  except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
    return {'ok': False, 'reason': f'corrupt or truncated image: {e}'}
  w, h = img.size
  if min(w, h) < max(1, options.min_size):
    return {'ok': False, 'reason': f'too small ({w}x{h} < --min-size {options.min_size})'}
  converted = []
  if fmt != 'JPEG':
    converted.append(f'{fmt} -> JPEG')
  if mode != 'RGB':
    converted.append(f'{mode} -> RGB')
  try:
    rgb = _to_rgb(img)
    if options.max_size and min(w, h) > options.max_size:
      s = options.max_size / min(w, h)
      new_size = (max(1, round(w * s)), max(1, round(h * s)))
      rgb = rgb.resize(new_size, Image.Resampling.BICUBIC, reducing_gap=3.0)
      converted.append(f'downscaled {w}x{h} -> {rgb.size[0]}x{rgb.size[1]}')
    if converted:
      buf = io.BytesIO()
      rgb.save(buf, format='JPEG', quality=options.quality)
      data = buf.getvalue()
  except (OSError, ValueError) as e:
    return {'ok': False, 'reason': f'conversion failed: {e}'}
  out: dict[str, Any] = {'ok': True, 'jpeg': data, 'size': rgb.size, 'converted': ', '.join(converted),
                         'tiny': min(rgb.size) < SMALL_SIDE}
  if options.compute_stats:
    thumb = np.asarray(rgb.resize((16, 16), Image.Resampling.BOX), np.float64) / 255.0
    out['stats'] = (thumb.mean(axis=(0, 1)), (thumb**2).mean(axis=(0, 1)))
  return out


def _work(args: tuple[str, str, Options]) -> tuple[str, dict[str, Any]]:
  src, rel, options = args
  return rel, process_file(os.path.join(src, rel), options)


# ----------------------------------------------------------------------------------------------------------
# The tfds builder


class _Report:
  def __init__(self):
    self.skipped: list[dict[str, str]] = []
    self.converted: dict[str, int] = {}
    self.tiny = 0
    self.written: dict[str, int] = {}
    self.stat_sum = np.zeros(3)
    self.stat_sq = np.zeros(3)
    self.stat_n = 0


def _make_builder(name: str, version: str, class_names: list[str] | None, scanned: Scan, src: str,
                  options: Options, pool, report: _Report, metadata: dict[str, Any], progress: bool):
  import tensorflow_datasets as tfds

  from mim_jax.data.builders import LocalBuilder

  features = {
    'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
    'file_name': tfds.features.Text(),
  }
  if class_names is not None:
    features['label'] = tfds.features.ClassLabel(names=class_names)

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      description=f'Images converted from the folder {src} by mim_jax.data.prepare ({scanned.layout}).',
      features=tfds.features.FeaturesDict(features),
      metadata=tfds.core.MetadataDict(metadata),
      disable_shuffling=True,  # records sorted by key = the scan's seeded order; the pipeline shuffles globally
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, items) for split, items in scanned.splits.items() if items}

  def _generate_examples(self, split, items):
    labels = dict(items)
    position = {rel: i for i, (rel, _) in enumerate(items)}
    tasks = [(src, rel, options) for rel, _ in items]
    n_ok = 0
    results = pool.imap(_work, tasks, chunksize=8) if pool is not None else map(_work, tasks)
    if progress:
      from tqdm import tqdm

      results = tqdm(results, total=len(tasks), desc=f'{name} {split}', unit='img', dynamic_ncols=True,
                     disable=not sys.stderr.isatty())  # no carriage returns in a redirected log
    for rel, res in results:
      if not res['ok']:
        report.skipped.append({'file': rel, 'split': split, 'reason': res['reason']})
        continue
      if res['converted']:
        for kind in res['converted'].split(', '):
          kind = re.sub(r'\d+x\d+ -> \d+x\d+', '', kind).strip()
          report.converted[kind] = report.converted.get(kind, 0) + 1
      report.tiny += int(res['tiny'])
      if split == 'train' and 'stats' in res:
        report.stat_sum += res['stats'][0]
        report.stat_sq += res['stats'][1]
        report.stat_n += 1
      example = {'image': res['jpeg'], 'file_name': rel}
      if class_names is not None:
        example['label'] = labels[rel]
      n_ok += 1
      yield f'{position[rel]:010d}', example  # tfds stores records sorted by key: the scan's seeded order
    report.written[split] = n_ok

  cls = type(
    _camel(name), (LocalBuilder,),
    {'name': name, 'VERSION': tfds.core.Version(version), '_info': _info,
     '_split_generators': _split_generators, '_generate_examples': _generate_examples,
     '__module__': __name__},
    skip_registration=True,
  )
  return cls


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[Any]:
  if workers <= 1:
    yield None
    return
  # 'spawn' keeps worker processes clean of the parent's threads (tfds, grain, jax may have started some).
  ctx = multiprocessing.get_context('spawn')
  pool = ctx.Pool(workers)
  try:
    yield pool
  finally:
    pool.terminate()
    pool.join()


def _camel(name: str) -> str:
  return ''.join(p.capitalize() for p in re.split(r'[^0-9a-zA-Z]+', name) if p) or 'Folder'


NAME_RE = re.compile(r'^[a-z][a-z0-9_]*$')


def default_name(src: str) -> str:
  base = os.path.basename(os.path.normpath(os.path.abspath(src))).lower()
  name = re.sub(r'[^a-z0-9_]+', '_', base).strip('_')
  if not name or not name[0].isalpha():
    name = 'images_' + name
  return name


def _lock(path: str):
  import fcntl

  @contextlib.contextmanager
  def cm():
    with open(path, 'a+') as f:
      fcntl.flock(f.fileno(), fcntl.LOCK_EX)
      try:
        yield
      finally:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)

  return cm()


@dataclasses.dataclass
class Result:
  path: str  # dataset directory (DATA_DIR/NAME/VERSION)
  report_path: str
  report: dict[str, Any]
  rebuilt: bool


def prepare(src: str, out: str, name: str | None = None, val_fraction: float = 0.05, seed: int = 0,
            workers: int | None = None, unlabelled: bool = False, options: Options = Options(),
            version: str = DEFAULT_VERSION, overwrite: bool = False, progress: bool = True) -> Result:
  """Converts the image folder `src` into the tfds ArrayRecord dataset `out/name/version` (see top)."""
  import tensorflow_datasets as tfds

  from mim_jax.data import sources

  src = os.path.abspath(os.path.expanduser(src))
  out = sources.resolve_data_dir(out)
  name = name or default_name(src)
  if not NAME_RE.match(name):
    raise ValueError(f'--name {name!r}: use lowercase letters, digits and underscores; start with a letter')
  if not re.fullmatch(r'\d+\.\d+\.\d+', version):
    raise ValueError(f'--version {version!r} must look like 1.0.0')
  if options.quality < 1 or options.quality > 100:
    raise ValueError(f'--quality must be in 1..100, got {options.quality}')
  workers = (os.cpu_count() or 1) if workers is None else int(workers)
  scanned = scan(src, val_fraction, seed, unlabelled)
  total = sum(len(v) for v in scanned.splits.values())
  if total == 0:
    raise ValueError(f'no files found under {src}')
  fp = fingerprint(src, scanned, options, val_fraction, seed)
  ds_dir = os.path.join(out, name, version)
  report_path = os.path.join(out, f'{name}_prepare_report.json')
  os.makedirs(out, exist_ok=True)
  with _lock(os.path.join(out, f'.{name}.prepare.lock')):
    if os.path.exists(os.path.join(ds_dir, 'dataset_info.json')):
      existing = _read_metadata(ds_dir)
      if existing.get('source_fingerprint') == fp and not overwrite:
        report = _load_json(report_path)
        print(f'{name}: up to date at {ds_dir} (same source files); nothing to do.')
        return Result(ds_dir, report_path, report, rebuilt=False)
      if not overwrite:
        raise FileExistsError(
          f'{ds_dir} exists but was built from different files or options than {src} now has; '
          'pass --overwrite to rebuild it (or --version to keep both)')
      shutil.rmtree(ds_dir)
    report = _Report()
    metadata = {'source': src, 'source_fingerprint': fp, 'layout': scanned.layout}
    t0 = time.time()
    with _pool(workers) as pool, tempfile.TemporaryDirectory(prefix=f'{name}_dl_') as download_dir:
      builder_cls = _make_builder(name, version, scanned.class_names, scanned, src, options, pool, report,
                                  metadata, progress)
      builder = builder_cls(data_dir=out, file_format='array_record')
      _add_stats_after_generation(builder, report, options)
      name_dir_existed = os.path.isdir(os.path.join(out, name))
      try:
        with contextlib.redirect_stdout(io.StringIO()):  # tfds's "Downloading and preparing": nothing is downloaded
          builder.download_and_prepare(
            download_dir=download_dir,
            download_config=tfds.download.DownloadConfig(
              try_download_gcs=False, download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS),
          )
      except AssertionError as e:  # tfds: a split without a single readable image
        if 'No examples were yielded' not in str(e):
          raise
        # Leave no half-built dataset behind (it would show up among the data dir's datasets).
        shutil.rmtree(ds_dir, ignore_errors=True)
        if not name_dir_existed:
          shutil.rmtree(os.path.join(out, name), ignore_errors=True)
        why = sorted(report.skipped, key=lambda r: r['file'])[:3]
        shown = '; '.join(f"{r['file']}: {r['reason']}" for r in why)
        raise ValueError(f'no readable image in {src} for a split ({len(report.skipped)} file(s) skipped, e.g. '
                         f'{shown}); nothing was written.') from None
    elapsed = time.time() - t0
    report.skipped.extend({'file': rel, 'split': '-', 'reason': why} for rel, why in scanned.skipped)
    summary = {
      'name': name, 'dataset_dir': ds_dir, 'source': src, 'layout': scanned.layout,
      'classes': len(scanned.class_names) if scanned.class_names else None,
      'written': report.written, 'skipped_count': len(report.skipped), 'converted': report.converted,
      'tiny_images_kept': report.tiny, 'seconds': round(elapsed, 1),
      'mean': builder.info.metadata.get('mean'), 'std': builder.info.metadata.get('std'),
      'skipped': sorted(report.skipped, key=lambda r: r['file']),
    }
    tmp = report_path + '.tmp'
    with open(tmp, 'w') as f:
      json.dump(summary, f, indent=1)
    os.replace(tmp, report_path)
  return Result(ds_dir, report_path, summary, rebuilt=True)


def _add_stats_after_generation(builder, report: _Report, options: Options) -> None:
  """Puts the train mean/std into the metadata once the splits are generated (tfds saves metadata after)."""
  original = builder._download_and_prepare

  def wrapped(*args, **kwargs):
    result = original(*args, **kwargs)
    if options.compute_stats and report.stat_n:
      mean = report.stat_sum / report.stat_n
      std = np.sqrt(np.maximum(report.stat_sq / report.stat_n - mean**2, 1e-12))
      builder.info.metadata['mean'] = [round(float(x), 5) for x in mean]
      builder.info.metadata['std'] = [round(float(x), 5) for x in std]
    return result

  builder._download_and_prepare = wrapped


def _read_metadata(ds_dir: str) -> dict[str, Any]:
  return _load_json(os.path.join(ds_dir, 'metadata.json'))


def _load_json(path: str) -> dict[str, Any]:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def _print_summary(result: Result) -> None:
  r = result.report
  print(f"\n{r['name']}: {r['written']} examples written to {r['dataset_dir']} in {r['seconds']} s "
        f"({r['layout']}, {r['classes'] or 'no'} classes)")
  if r['converted']:
    print('  converted/re-encoded: ' + ', '.join(f'{k}: {v}' for k, v in sorted(r['converted'].items())))
  if r['tiny_images_kept']:
    print(f"  tiny images kept (shorter side < {SMALL_SIDE} px; the pipeline upsamples them): "
          f"{r['tiny_images_kept']}")
  see = f'; see {result.report_path}' if r['skipped_count'] else ''
  print(f"  skipped: {r['skipped_count']} file(s){see}")
  for s in r['skipped'][:20]:
    print(f"    {s['file']}: {s['reason']}")
  if r['skipped_count'] > 20:
    print(f"    ... and {r['skipped_count'] - 20} more")
  data_dir = os.path.dirname(os.path.dirname(r['dataset_dir']))
  print(f"Read it with tfds.data_source({r['name']!r}, data_dir={data_dir!r}) or the pipeline config "
        f"data.name={r['name']!r}, data.data_dir={data_dir!r}")


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog='python -m mim_jax.data.prepare', description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--src', required=True, help='image folder (class subfolders, train/ + val/, or flat)')
  p.add_argument('--out', required=True, help='tfds data dir to write DATA_DIR/NAME/VERSION into')
  p.add_argument('--name', default=None, help='dataset name (default: the folder name in snake_case)')
  p.add_argument('--val-fraction', type=float, default=0.05,
                 help='fraction of each class held out as validation when --src has no val/ (0: none)')
  p.add_argument('--seed', type=int, default=0, help='seed of the train/validation split')
  p.add_argument('--workers', type=int, default=None, help='decode processes (default: all cores)')
  p.add_argument('--unlabelled', action='store_true', help='ignore class folders: one unlabelled image pool')
  p.add_argument('--quality', type=int, default=95, help='JPEG quality for images that must be re-encoded')
  p.add_argument('--max-size', type=int, default=0,
                 help='downscale images whose shorter side exceeds this (0: keep)')
  p.add_argument('--min-size', type=int, default=1, help='skip images whose shorter side is below this')
  p.add_argument('--stats', choices=['compute', 'imagenet'], default='compute',
                 help='compute: store the train mean/std in the metadata; imagenet: ImageNet constants')
  p.add_argument('--version', default=DEFAULT_VERSION)
  p.add_argument('--overwrite', action='store_true', help='rebuild even if the dataset exists')
  p.add_argument('--no-progress', action='store_true')
  args = p.parse_args(argv)
  import tensorflow_datasets as tfds

  tfds.disable_progress_bar()  # one progress bar per split is ours; tfds's would interleave with it
  try:
    result = prepare(
      args.src, args.out, args.name, val_fraction=args.val_fraction, seed=args.seed, workers=args.workers,
      unlabelled=args.unlabelled, version=args.version, overwrite=args.overwrite,
      progress=not args.no_progress,
      options=Options(quality=args.quality, max_size=args.max_size, min_size=args.min_size,
                      compute_stats=args.stats == 'compute'),
    )
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if result.rebuilt:
    _print_summary(result)
  return 0


if __name__ == '__main__':
  sys.exit(main())
