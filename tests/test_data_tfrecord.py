"""TF-free TFRecord -> ArrayRecord conversion of a tfds dataset (the tfds-prepared ImageNet path)."""

import glob
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from array_record.python import array_record_module

from mim_jax.data import digits, pipeline
from mim_jax.data import tfrecord_to_array_record as t2a


def test_crc32c_known_value():
  assert t2a.crc32c(b'123456789') == 0xE3069283  # the standard CRC-32C check value


def _as_tfrecord_dataset(array_record_dir, out_dir):
  """Rewrites a tfds ArrayRecord dataset folder as the TFRecord dataset tfds would have written."""
  os.makedirs(out_dir)
  info = json.load(open(os.path.join(array_record_dir, 'dataset_info.json')))
  for path in sorted(glob.glob(os.path.join(array_record_dir, '*.array_record-*'))):
    reader = array_record_module.ArrayRecordReader(path)
    records = reader.read_all()
    reader.close()
    name = os.path.basename(path).replace('.array_record-', '.tfrecord-')
    t2a.write_tfrecord(os.path.join(out_dir, name), records)
  for f in os.listdir(array_record_dir):
    if '.array_record-' not in f and f != 'dataset_info.json':
      shutil.copy(os.path.join(array_record_dir, f), out_dir)
  info['fileFormat'] = 'tfrecord'
  json.dump(info, open(os.path.join(out_dir, 'dataset_info.json'), 'w'))


def test_tfrecord_dataset_converts_to_identical_array_record(tmp_path):
  src_root = str(tmp_path / 'orig')
  ar_dir = digits.ensure_digits(src_root)
  tf_dir = str(tmp_path / 'tfrecord' / 'mim_digits' / digits.VERSION)
  _as_tfrecord_dataset(ar_dir, tf_dir)
  cfg = pipeline.default_data_config()
  cfg.data_dir = str(tmp_path / 'tfrecord')
  with pytest.raises(ValueError, match='needs TensorFlow'):
    pipeline.dataset_info(cfg)

  out_root = tmp_path / 'converted'
  out_dir = str(out_root / 'mim_digits' / digits.VERSION)
  assert t2a.main(['--src', tf_dir, '--out', out_dir, '--workers', '1', '--no-progress']) == 0
  orig = tfds.data_source('mim_digits', data_dir=src_root)
  conv = tfds.data_source('mim_digits', data_dir=str(out_root))
  for split in ('train', 'test'):
    assert len(conv[split]) == len(orig[split])
    for i in (0, 7, len(orig[split]) - 1):
      np.testing.assert_array_equal(conv[split][i]['image'], orig[split][i]['image'])
      assert conv[split][i]['label'] == orig[split][i]['label']
  cfg.data_dir = str(out_root)
  assert pipeline.dataset_info(cfg).num_train == 1437


def test_damaged_tfrecord_is_reported_with_its_name(tmp_path):
  path = str(tmp_path / 'x.tfrecord-00000-of-00001')
  t2a.write_tfrecord(path, [b'a' * 100, b'b' * 50])
  assert list(t2a.read_tfrecord(path, verify_crc=True)) == [b'a' * 100, b'b' * 50]
  data = open(path, 'rb').read()
  open(path, 'wb').write(data[:-20])
  with pytest.raises(ValueError, match='x.tfrecord-00000-of-00001: truncated record'):
    list(t2a.read_tfrecord(path))
  corrupted = bytearray(data)
  corrupted[3] ^= 0xFF  # inside the first length field
  open(path, 'wb').write(bytes(corrupted))
  with pytest.raises(ValueError, match='corrupt record length'):
    list(t2a.read_tfrecord(path))
  assert t2a.main(['--src', str(tmp_path / 'nothing'), '--out', str(tmp_path / 'o')]) == 2
