"""Fashion-MNIST built offline from its IDX files: from small files the test writes, and (when Debian's package is
installed) from the real ones."""

from __future__ import annotations

import gzip
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import REPO

from mim_jax.data import fashion_mnist, pipeline


def _write_idx(path, array: np.ndarray) -> None:
  magic = fashion_mnist.IMAGE_MAGIC if array.ndim == 3 else fashion_mnist.LABEL_MAGIC
  header = magic.to_bytes(4, 'big') + b''.join(int(d).to_bytes(4, 'big') for d in array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope='module')
def small_src(tmp_path_factory):
  """Four IDX files like the real ones, with 40 train and 20 test images."""
  src = tmp_path_factory.mktemp('idx')
  rng = np.random.default_rng(0)
  arrays = {}
  for split, n in (('train', 40), ('test', 20)):
    images, labels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10
    image_file, label_file = fashion_mnist.FILES[split]
    _write_idx(src / image_file, images)
    _write_idx(src / label_file, labels)
    arrays[split] = (images, labels)
  return str(src), arrays


def _config(data_dir, src):
  c = pipeline.default_data_config('fashion_mnist')
  c.data_dir, c.src = str(data_dir), src
  return c


def test_builds_from_idx_files_with_the_public_builders_splits_and_features(tmp_path, small_src):
  src, arrays = small_src
  info = pipeline.dataset_info(_config(tmp_path, src))
  assert (info.image_shape, info.num_train, info.num_eval, info.num_classes) == ((28, 28, 1), 40, 20, 10)
  assert info.splits == {'train': 40, 'test': 20}
  images, labels = arrays['train']
  assert info.mean == (round(float((images / 255.0).mean()), 5),)  # the train split's statistics
  builder = tfds.builder_from_directory(fashion_mnist.dataset_dir(str(tmp_path)))
  assert builder.info.features['label'].names == list(fashion_mnist.CLASS_NAMES)
  stored = tfds.data_source('fashion_mnist', data_dir=str(tmp_path))['train']
  by_image = {images[i].tobytes(): int(labels[i]) for i in range(len(labels))}
  for i in range(len(stored)):  # every example, pixels and label, in tfds's hashed order
    record = stored[i]
    assert record['image'].shape == (28, 28, 1) and by_image[record['image'][..., 0].tobytes()] == record['label']
  batch = next(pipeline.train_iterator(_config(tmp_path, src), 8, seed=0))
  assert batch['image'].shape == (8, 28, 28, 1) and batch['image'].dtype == np.float32


def test_missing_files_are_one_error_and_nothing_is_written(tmp_path):
  data_dir, empty = tmp_path / 'data', tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match=r'dataset-fashion-mnist.*train-images-idx3-ubyte\.gz.*--config\.data'
                                              r'\.src'):
    pipeline.dataset_info(_config(data_dir, str(empty)))
  assert not data_dir.exists()
  proc = subprocess.run([sys.executable, '-m', 'mim_jax.main', '--config=configs/mae/fashion_mnist.py:tiny',
                         f'--workdir={tmp_path / "run"}', f'--config.data.data_dir={data_dir}',
                         f'--config.data.src={empty}'], cwd=REPO, capture_output=True, text=True, timeout=300)
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode == 2 and lines[-1].startswith('error: Fashion-MNIST is not built yet'), proc.stderr[-2000:]
  assert not data_dir.exists()


def test_a_truncated_idx_file_is_named(tmp_path):
  path = tmp_path / 'bad-idx1-ubyte.gz'
  with gzip.open(path, 'wb') as f:
    f.write(fashion_mnist.LABEL_MAGIC.to_bytes(4, 'big') + (10).to_bytes(4, 'big') + bytes(3))
  with pytest.raises(ValueError, match='truncated'):
    fashion_mnist.read_idx(str(path))


@pytest.mark.skipif(fashion_mnist.missing_files(fashion_mnist.DEFAULT_SRC) != [],
                    reason='the real files come from Debian: apt-get install dataset-fashion-mnist')
def test_the_real_files():
  arrays = fashion_mnist.load_arrays(fashion_mnist.DEFAULT_SRC)
  (train_images, train_labels), (test_images, test_labels) = arrays['train'], arrays['test']
  assert train_images.shape == (60000, 28, 28, 1) and test_images.shape == (10000, 28, 28, 1)
  assert np.bincount(train_labels).tolist() == [6000] * 10 and np.bincount(test_labels).tolist() == [1000] * 10
  assert train_labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the dataset's published first labels
  assert test_labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]


def test_pretrain_then_finetune_tiny_on_the_built_dataset(tmp_path, small_src, monkeypatch):
  from conftest import load_config

  from mim_jax import main

  src, _ = small_src
  pre = load_config('configs/mae/fashion_mnist.py', 'tiny')
  pre.data.data_dir, pre.data.src = str(tmp_path / 'data'), src
  pre.eval.enabled = False
  main.run(pre, str(tmp_path / 'pre'))
  ft = load_config('configs/eval/finetune_fashion_mnist.py', 'tiny')
  monkeypatch.chdir(tmp_path)
  ft.init, ft.data.data_dir = 'pre', str(tmp_path / 'data')  # relative, as users type it (orbax wants absolute)
  summary = main.run(ft, 'ft')
  assert summary['finetune/steps'] == 6 and 0.0 <= summary['finetune/top1'] <= 1.0
