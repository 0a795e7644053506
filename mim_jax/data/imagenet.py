"""ImageNet-1k (ILSVRC2012) helpers for launch/prepare_imagenet.sh: sort the flat validation folder into classes.

    python -m mim_jax.data.imagenet sort-val --val VAL_DIR --labels DEVKIT_OR_CSV --out OUT_VAL_DIR

The validation tarball holds 50,000 JPEGs in one folder; their classes come either from the devkit
(`ILSVRC2012_devkit_t12.tar.gz` or its extracted folder: `data/meta.mat` maps the ILSVRC2012 ids 1..1000 of
`data/ILSVRC2012_validation_ground_truth.txt` to WordNet ids, read with scipy), or from a CSV whose rows start with
`ImageId,n01234567...` (e.g. LOC_val_solution.csv). Files are hard-linked (copied across file systems) into
`OUT/<wnid>/`, so the folder converter sees `train/<wnid>/` + `val/<wnid>/` and labels both splits in sorted-wnid
order, the order tfds's imagenet2012 uses.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import re
import shutil
import sys
import tarfile

NUM_VAL = 50_000
WNID_RE = re.compile(r'^n\d{8}$')


def _devkit_members(path: str) -> tuple[bytes, bytes]:
  """(meta.mat bytes, ground-truth txt bytes) from a devkit tarball or folder."""
  meta_name, gt_name = 'data/meta.mat', 'data/ILSVRC2012_validation_ground_truth.txt'
  if os.path.isdir(path):
    root = path
    if not os.path.exists(os.path.join(root, meta_name)):
      root = os.path.join(path, 'ILSVRC2012_devkit_t12')
    with open(os.path.join(root, meta_name), 'rb') as f1, open(os.path.join(root, gt_name), 'rb') as f2:
      return f1.read(), f2.read()
  with tarfile.open(path) as tar:
    found = {}
    for m in tar.getmembers():
      for key in (meta_name, gt_name):
        if m.name.endswith(key):
          found[key] = tar.extractfile(m).read()
  if len(found) != 2:
    raise FileNotFoundError(f'{path} does not contain {meta_name} and {gt_name} (is it the ILSVRC2012 devkit?)')
  return found[meta_name], found[gt_name]


def val_labels(labels_path: str) -> dict[str, str]:
  """Maps validation file names (ILSVRC2012_val_00000001.JPEG) to WordNet ids."""
  if labels_path.endswith('.csv'):
    out = {}
    with open(labels_path, newline='') as f:
      for row in csv.reader(f):
        if len(row) < 2 or not row[1].split() or not WNID_RE.match(row[1].split()[0]):
          continue  # header or malformed line
        name = row[0] if row[0].upper().endswith('.JPEG') else row[0] + '.JPEG'
        out[name] = row[1].split()[0]
    return out
  from scipy.io import loadmat

  meta, gt = _devkit_members(labels_path)
  synsets = loadmat(io.BytesIO(meta), squeeze_me=True)['synsets']
  id_to_wnid = {int(s['ILSVRC2012_ID']): str(s['WNID']) for s in synsets if int(s['ILSVRC2012_ID']) <= 1000}
  ids = [int(x) for x in gt.decode().split()]
  return {f'ILSVRC2012_val_{i + 1:08d}.JPEG': id_to_wnid[c] for i, c in enumerate(ids)}


def sort_val(val_dir: str, labels_path: str, out_dir: str) -> int:
  labels = val_labels(labels_path)
  files = sorted(f for f in os.listdir(val_dir) if f.upper().endswith('.JPEG'))
  missing = [f for f in files if f not in labels]
  if missing:
    raise ValueError(f'{len(missing)} validation files have no label in {labels_path} (e.g. {missing[0]})')
  if len(files) != NUM_VAL:
    print(f'note: {len(files)} validation JPEGs in {val_dir} (ILSVRC2012 has {NUM_VAL})', file=sys.stderr)
  for f in files:
    d = os.path.join(out_dir, labels[f])
    os.makedirs(d, exist_ok=True)
    dst = os.path.join(d, f)
    if os.path.exists(dst):
      continue
    try:
      os.link(os.path.join(val_dir, f), dst)
    except OSError:
      shutil.copy2(os.path.join(val_dir, f), dst)
  return len(files)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m mim_jax.data.imagenet', description=__doc__.split('\n\n')[0])
  sub = p.add_subparsers(dest='cmd', required=True)
  s = sub.add_parser('sort-val', help='sort the flat validation folder into <wnid>/ subfolders')
  s.add_argument('--val', required=True, help='folder with ILSVRC2012_val_*.JPEG')
  s.add_argument('--labels', required=True, help='devkit tarball/folder, or a CSV (ImageId,PredictionString)')
  s.add_argument('--out', required=True)
  args = p.parse_args(argv)
  try:
    n = sort_val(args.val, args.labels, args.out)
  except (FileNotFoundError, ValueError, KeyError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'sorted {n} validation images into {args.out}/<wnid>/')
  return 0


if __name__ == '__main__':
  sys.exit(main())
