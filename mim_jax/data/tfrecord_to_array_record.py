"""Convert a tfds dataset prepared as TFRecord (e.g. imagenet2012/5.1.0) to ArrayRecord, without TensorFlow.

    python -m mim_jax.data.tfrecord_to_array_record --src TFDS_DIR/imagenet2012/5.1.0 \
        --out DATA_DIR/imagenet2012/5.1.0 [--workers 8]

tfds stores the same serialized `tf.train.Example` bytes in both formats, so no example is decoded or re-encoded:
each TFRecord shard's payloads are copied into an ArrayRecord shard of the same name (`...tfrecord-00012-of-01024`
-> `...array_record-00012-of-01024`, group_size 1 for random access, as tfds writes them), the record counts are
checked against `dataset_info.json`, the other metadata files are copied, and `dataset_info.json` is rewritten
with `fileFormat: array_record`. The result is read by `tfds.data_source` and by the pipeline. The output is
written to `OUT.incomplete` and renamed when complete; an existing OUT is left alone unless --overwrite.

TFRecord framing is: uint64 length, uint32 masked CRC-32C of the length, payload, uint32 masked CRC-32C of the
payload. The length CRC is always checked (it catches truncated or misaligned files); payload CRCs are checked
with --verify-crc (pure Python, slow: for spot checks).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import struct
import sys
from collections.abc import Iterable, Iterator

_CRC_TABLE: list[int] = []


def _crc_table() -> list[int]:
  if not _CRC_TABLE:
    for i in range(256):
      c = i
      for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
      _CRC_TABLE.append(c)
  return _CRC_TABLE


def crc32c(data: bytes) -> int:
  table = _crc_table()
  c = 0xFFFFFFFF
  for b in data:
    c = table[(c ^ b) & 0xFF] ^ (c >> 8)
  return c ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
  c = crc32c(data)
  return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_tfrecord(path: str, verify_crc: bool = False) -> Iterator[bytes]:
  """Yields the payloads of a TFRecord file; raises ValueError naming the file on a damaged frame."""
  with open(path, 'rb') as f:
    offset = 0
    while True:
      header = f.read(12)
      if not header:
        return
      if len(header) < 12:
        raise ValueError(f'{path}: truncated record header at byte {offset}')
      length, length_crc = struct.unpack('<QI', header)
      if masked_crc(header[:8]) != length_crc:
        raise ValueError(f'{path}: corrupt record length at byte {offset} (CRC mismatch)')
      data = f.read(length)
      footer = f.read(4)
      if len(data) < length or len(footer) < 4:
        raise ValueError(f'{path}: truncated record at byte {offset}')
      if verify_crc and masked_crc(data) != struct.unpack('<I', footer)[0]:
        raise ValueError(f'{path}: corrupt record payload at byte {offset} (CRC mismatch)')
      offset += 16 + length
      yield data


def write_tfrecord(path: str, records: Iterable[bytes]) -> None:
  """Writes TFRecord framing (used by tests; tfds with TensorFlow writes the real ones)."""
  with open(path, 'wb') as f:
    for data in records:
      length = struct.pack('<Q', len(data))
      f.write(length + struct.pack('<I', masked_crc(length)) + data + struct.pack('<I', masked_crc(data)))


def _shard_names(info: dict, split: dict, file_format: str) -> list[str]:
  template = split.get('filepathTemplate') or '{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}'
  lengths = [int(x) for x in split.get('shardLengths', [])]
  n = len(lengths)
  names = []
  for i in range(n):
    names.append(template.replace('{DATASET}', info['name']).replace('{SPLIT}', split['name'])
                 .replace('{FILEFORMAT}', file_format).replace('{SHARD_X_OF_Y}', f'{i:05d}-of-{n:05d}')
                 .replace('{SHARD_INDEX}', f'{i:05d}').replace('{NUM_SHARDS}', f'{n:05d}'))
  return names


def _convert_shard(args: tuple[str, str, str, int, bool]) -> tuple[str, int]:
  from array_record.python import array_record_module

  split, src, dst, expected, verify_crc = args
  writer = array_record_module.ArrayRecordWriter(dst, 'group_size:1')
  count = 0
  try:
    for payload in read_tfrecord(src, verify_crc):
      writer.write(payload)
      count += 1
  finally:
    writer.close()
  if count != expected:
    raise ValueError(f'{src}: {count} records, but dataset_info.json says {expected}')
  return split, count


def convert(src: str, out: str, workers: int = 8, overwrite: bool = False, verify_crc: bool = False,
            progress: bool = True) -> dict[str, int]:
  """Converts the tfds dataset version folder `src` (TFRecord) into `out` (ArrayRecord); returns split sizes."""
  info_path = os.path.join(src, 'dataset_info.json')
  if not os.path.exists(info_path):
    raise FileNotFoundError(f'{info_path} not found: --src must be a prepared tfds dataset version folder, '
                            'e.g. ~/tensorflow_datasets/imagenet2012/5.1.0')
  with open(info_path) as f:
    info = json.load(f)
  file_format = info.get('fileFormat', 'tfrecord')
  if file_format != 'tfrecord':
    raise ValueError(f'{src} is stored as {file_format!r}, not TFRecord; nothing to convert')
  if os.path.exists(os.path.join(out, 'dataset_info.json')) and not overwrite:
    print(f'{out} already exists; nothing to do (--overwrite to redo).')
    return {s['name']: sum(int(x) for x in s.get('shardLengths', [])) for s in info['splits']}
  tmp = out.rstrip('/') + '.incomplete'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  tasks = []
  for split in info['splits']:
    srcs = _shard_names(info, split, 'tfrecord')
    dsts = _shard_names(info, split, 'array_record')
    for s, d, n in zip(srcs, dsts, split.get('shardLengths', [])):
      if not os.path.exists(os.path.join(src, s)):
        raise FileNotFoundError(f'shard {s} listed in {info_path} is missing')
      tasks.append((split['name'], os.path.join(src, s), os.path.join(tmp, d), int(n), verify_crc))
  sizes = {}
  pool = multiprocessing.get_context('spawn').Pool(workers) if workers > 1 else None
  try:
    results = pool.imap_unordered(_convert_shard, tasks) if pool else map(_convert_shard, tasks)
    if progress:
      from tqdm import tqdm

      results = tqdm(results, total=len(tasks), desc='shards', unit='shard', disable=not sys.stderr.isatty())
    for split_name, count in results:
      sizes[split_name] = sizes.get(split_name, 0) + count
  finally:
    if pool:
      pool.terminate()
      pool.join()
  for entry in os.listdir(src):  # features.json, label files, metadata, ...
    full = os.path.join(src, entry)
    if os.path.isfile(full) and '.tfrecord-' not in entry and entry != 'dataset_info.json':
      shutil.copy2(full, os.path.join(tmp, entry))
  info['fileFormat'] = 'array_record'
  with open(os.path.join(tmp, 'dataset_info.json'), 'w') as f:
    json.dump(info, f, indent=2)
  if os.path.exists(out):
    shutil.rmtree(out)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  os.replace(tmp, out)
  return sizes


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m mim_jax.data.tfrecord_to_array_record',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('--src', required=True, help='TFRecord dataset version folder (has dataset_info.json)')
  p.add_argument('--out', required=True, help='ArrayRecord dataset version folder to create')
  p.add_argument('--workers', type=int, default=os.cpu_count() or 1)
  p.add_argument('--overwrite', action='store_true')
  p.add_argument('--verify-crc', action='store_true', help='check every payload CRC (slow, pure Python)')
  p.add_argument('--no-progress', action='store_true')
  args = p.parse_args(argv)
  try:
    sizes = convert(os.path.expanduser(args.src), os.path.expanduser(args.out), args.workers, args.overwrite,
                    args.verify_crc, progress=not args.no_progress)
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'{args.out}: ' + ', '.join(f'{k}: {v}' for k, v in sorted(sizes.items())))
  return 0


if __name__ == '__main__':
  sys.exit(main())
