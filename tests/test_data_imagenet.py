"""launch/prepare_imagenet.sh end to end on a miniature ILSVRC2012 layout (tarballs + devkit), and val sorting."""

import io
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mim_jax.data import imagenet, sample_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WNIDS = ['n01440764', 'n01443537']


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _jpeg(rng, photos):
  return sample_images.jpeg_bytes(sample_images.random_photo(photos, rng, (64, 48)), 85)


def _fake_ilsvrc(d):
  scipy_io = pytest.importorskip('scipy.io')
  rng = np.random.default_rng(0)
  photos = sample_images.source_photos()
  with tarfile.open(os.path.join(d, 'ILSVRC2012_img_train.tar'), 'w') as train:
    for w in WNIDS:
      buf = io.BytesIO()
      with tarfile.open(fileobj=buf, mode='w') as class_tar:
        for i in range(3):
          _add(class_tar, f'{w}_{i}.JPEG', _jpeg(rng, photos))
      _add(train, f'{w}.tar', buf.getvalue())
  val_classes = [2, 1, 1, 2]  # ILSVRC2012 ids of the 4 validation images
  with tarfile.open(os.path.join(d, 'ILSVRC2012_img_val.tar'), 'w') as val:
    for i in range(len(val_classes)):
      _add(val, f'ILSVRC2012_val_{i + 1:08d}.JPEG', _jpeg(rng, photos))
  synsets = np.zeros((3,), dtype=[('ILSVRC2012_ID', 'O'), ('WNID', 'O'), ('words', 'O')])
  for i, (sid, wnid) in enumerate([(1, WNIDS[0]), (2, WNIDS[1]), (1001, 'n00001740')]):
    synsets[i] = (sid, wnid, 'x')
  meta = io.BytesIO()
  scipy_io.savemat(meta, {'synsets': synsets})
  with tarfile.open(os.path.join(d, 'ILSVRC2012_devkit_t12.tar.gz'), 'w:gz') as dev:
    _add(dev, 'ILSVRC2012_devkit_t12/data/meta.mat', meta.getvalue())
    _add(dev, 'ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt',
         ''.join(f'{c}\n' for c in val_classes).encode())
  return val_classes


def test_prepare_imagenet_from_tars(tmp_path):
  src, out = tmp_path / 'tars', tmp_path / 'data'
  src.mkdir()
  val_classes = _fake_ilsvrc(str(src))
  cmd = ['bash', os.path.join(ROOT, 'launch', 'prepare_imagenet.sh'), '--from-tars', str(src), '--out', str(out),
         '--workers', '1']
  env = dict(os.environ, PYTHON=sys.executable)
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "data.name='imagenet2012'" in proc.stdout
  ds = tfds.data_source('imagenet2012', data_dir=str(out))
  assert (len(ds['train']), len(ds['validation'])) == (6, 4)
  got = {r['file_name'].decode().split('/')[-1]: r['label'] for r in ds['validation'].__getitems__(range(4))}
  expected = {f'ILSVRC2012_val_{i + 1:08d}.JPEG': c - 1 for i, c in enumerate(val_classes)}
  assert got == expected
  assert ds['train'][0]['image'].shape[-1] == 3


def test_val_labels_from_csv(tmp_path):
  csv = tmp_path / 'LOC_val_solution.csv'
  csv.write_text('ImageId,PredictionString\nILSVRC2012_val_00000001,n01751748 1 2 3 4\n')
  assert imagenet.val_labels(str(csv)) == {'ILSVRC2012_val_00000001.JPEG': 'n01751748'}
