"""Evaluation subsets are fair samples: the converter stores splits in a seeded order, evaluators sample (never
take a prefix), and a probe that cannot see every class says so."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mim_jax.data import pipeline, prepare, sources, subsets
from mim_jax.data.builders import LocalBuilder
from mim_jax.train import sharding as shd

CLASSES = 5
PER_CLASS = 40


def test_stratified_counts_and_samples():
  labels = np.repeat(np.arange(3), [50, 30, 20])  # class-sorted, unequal
  assert subsets.stratified_counts(labels, 10) == {0: 5, 1: 3, 2: 2}
  assert sum(subsets.stratified_counts(labels, 7).values()) == 7
  s = subsets.sample(100, 10, seed=0, labels=labels)
  assert s.kind == 'stratified' and len(s) == 10 and np.all(np.diff(s.indices) > 0)
  assert np.bincount(labels[s.indices]).tolist() == [5, 3, 2]
  assert np.array_equal(s.indices, subsets.sample(100, 10, seed=0, labels=labels).indices)  # reproducible
  assert not np.array_equal(s.indices, subsets.sample(100, 10, seed=1, labels=labels).indices)
  u = subsets.sample(100, 10, seed=0)
  assert u.kind == 'uniform' and len(set(u.indices.tolist())) == 10 and u.indices.max() < 100
  assert subsets.sample(100, 100, seed=0).kind == 'all' and subsets.sample(100, None, seed=0).indices is None
  with pytest.raises(ValueError, match='at least one example'):
    subsets.sample(100, 0, seed=0)


def test_probe_label_checks():
  assert subsets.check_labels(np.arange(3), np.arange(3), 3, 'probe') == []
  (warning,) = subsets.check_labels(np.array([0, 1]), np.array([0, 1]), 3, 'probe')
  assert 'no example of 1 of the 3 classes ([2])' in warning
  with pytest.raises(ValueError, match='none in common'):
    subsets.check_labels(np.array([0, 1]), np.array([2, 3]), 4, 'probe')


class _ClassSorted(LocalBuilder, skip_registration=True):
  """A raw-array dataset stored class by class (what converters before the seeded order, and other tools, wrote)."""

  name = 'class_sorted'
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, disable_shuffling=True,
        features=tfds.features.FeaturesDict({'image': tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                                             'label': tfds.features.ClassLabel(num_classes=CLASSES)}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(0), 'test': self._generate_examples(1)}

  def _generate_examples(self, seed):
    rng = np.random.default_rng(seed)
    for i in range(CLASSES * PER_CLASS):  # key order = class order
      yield i, {'image': rng.integers(0, 255, (8, 8, 1), dtype=np.uint8), 'label': i // PER_CLASS}


@pytest.fixture(scope='module')
def class_sorted(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('sorted'))
  builder = _ClassSorted(data_dir=out, file_format='array_record')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  cfg = pipeline.default_data_config('class_sorted')
  cfg.data_dir, cfg.image_size, cfg.eval_split = out, 8, 'test'
  return cfg


def test_capped_evaluations_reach_every_class_of_a_class_sorted_split(class_sorted):
  cfg = class_sorted
  source = tfds.data_source('class_sorted', data_dir=cfg.data_dir)['train']
  assert [int(source[i]['label']) for i in (0, 39, 40, 199)] == [0, 0, 1, 4]  # stored class by class
  opened = sources.open_dataset('class_sorted', cfg.data_dir)
  for cache in ('auto', False):  # labels from the in-memory split, and read from the records on disk
    np.testing.assert_array_equal(sources.split_labels(opened, 'train', cache), np.arange(200) // PER_CLASS)
  n = CLASSES * PER_CLASS // 5  # a fifth of the split: a prefix would hold class 0 only
  arrays = pipeline.eval_arrays(cfg, split='train', max_examples=n)
  assert np.bincount(arrays['label'], minlength=CLASSES).tolist() == [n // CLASSES] * CLASSES  # stratified
  from mim_jax.eval import streaming
  mesh = shd.make_mesh(1, 1)
  batches = list(streaming.eval_batches(cfg, 'train', 16, mesh, max_examples=n))
  labels = np.concatenate([np.asarray(b['label'])[np.asarray(b['valid'])] for b in batches])
  assert sorted(labels.tolist()) == sorted(arrays['label'].tolist())  # the same subset, streamed
  summary = streaming.subset_summary(cfg, 'eval', n, None)
  assert summary == {'eval/train_examples': n, 'eval/train_sample': 'stratified', 'eval/subset_seed': 0,
                     'eval/eval_examples': CLASSES * PER_CLASS, 'eval/eval_sample': 'all'}


def test_the_converter_stores_each_split_in_a_seeded_order(tmp_path):
  from PIL import Image
  src = tmp_path / 'src'
  rng = np.random.default_rng(0)
  for c in range(CLASSES):  # written class by class, as a class-folder tree is
    os.makedirs(src / f'class_{c}')
    for i in range(20):
      Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(src / f'class_{c}' / f'{i:03d}.png')
  out = str(tmp_path / 'out')
  prepare.prepare(str(src), out, name='shuffled', val_fraction=0.2, workers=1, progress=False)
  train = tfds.data_source('shuffled', data_dir=out)['train']
  labels = [int(train[i]['label']) for i in range(len(train))]
  first = labels[:len(labels) // 5]
  assert set(first) == set(range(CLASSES)), first  # the first 20% already holds every class
  again = str(tmp_path / 'again')
  prepare.prepare(str(src), again, name='shuffled', val_fraction=0.2, workers=1, progress=False)
  train2 = tfds.data_source('shuffled', data_dir=again)['train']
  assert [train2[i]['file_name'] for i in range(len(train2))] == [train[i]['file_name'] for i in range(len(train))]
