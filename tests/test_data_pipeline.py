"""The bundled digits dataset and the grain pipeline: builder, splits, determinism, resume, sharding."""

import glob
import multiprocessing
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mim_jax.data import digits, pipeline, sources, transforms


@pytest.fixture
def cfg(data_dir):
  c = pipeline.default_data_config()
  c.data_dir = data_dir
  return c


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_builder_writes_array_record_readable_by_tfds(data_dir):
  ds_dir = os.path.join(data_dir, 'mim_digits', digits.VERSION)
  assert glob.glob(os.path.join(ds_dir, 'mim_digits-train.array_record-*'))
  assert glob.glob(os.path.join(ds_dir, 'mim_digits-test.array_record-*'))
  src = tfds.data_source('mim_digits', data_dir=data_dir)
  assert len(src['train']) == 1437 and len(src['test']) == 360
  rec = src['train'][0]
  assert rec['image'].dtype == np.uint8 and rec['image'].shape == (8, 8, 1)
  # The stored pixels are sklearn's digits rescaled 0..16 -> 0..255, and the two splits partition the dataset.
  images, labels, splits = digits._digits_arrays()
  stored = {(r['image'].tobytes(), int(r['label'])) for r in src['test'].__getitems__(range(360))}
  expected = {(images[i].tobytes(), int(labels[i])) for i in splits['test']}
  assert stored == expected
  assert images.max() == 255 and len(set(splits['train']) | set(splits['test'])) == 1797


def test_split_sizes_labels_and_info(cfg):
  info = pipeline.dataset_info(cfg)
  assert info.image_shape == (16, 16, 1)
  assert (info.num_train, info.num_eval, info.num_classes) == (1437, 360, 10)
  assert info.mean == digits.MEAN and info.std == digits.STD
  assert info.steps_per_epoch(128) == 11
  arrays = pipeline.eval_arrays(cfg)
  assert arrays['image'].shape == (360, 16, 16, 1) and arrays['image'].dtype == np.float32
  assert arrays['label'].dtype == np.int32
  counts = np.bincount(arrays['label'], minlength=10)
  assert counts.min() >= 35 and counts.max() <= 37  # stratified: 36 per class give or take one
  train = pipeline.eval_arrays(cfg, split='train', max_examples=100)
  assert train['image'].shape == (100, 16, 16, 1)
  # Normalized with the train statistics: roughly zero mean / unit variance.
  full_train = pipeline.eval_arrays(cfg, split='train')['image']
  assert abs(full_train.mean()) < 0.1 and 0.8 < full_train.std() < 1.2


def test_eval_transform_is_a_plain_bicubic_resize(cfg):
  from PIL import Image

  arrays = pipeline.eval_arrays(cfg, max_examples=3)  # a sample of three, in stored order
  first = int(pipeline.eval_subset(cfg, 'test', 3).indices[0])
  raw = tfds.data_source('mim_digits', data_dir=cfg.data_dir)['test'][first]['image']
  expected = np.asarray(Image.fromarray(raw[..., 0]).resize((16, 16), Image.Resampling.BICUBIC))
  got = arrays['image'][0, ..., 0] * digits.STD[0] + digits.MEAN[0]
  np.testing.assert_allclose(got, expected / 255.0, atol=1e-5)


def test_train_batches_shapes_and_determinism(cfg):
  a = _take(pipeline.train_iterator(cfg, 64, seed=3), 3)
  b = _take(pipeline.train_iterator(cfg, 64, seed=3), 3)
  c = _take(pipeline.train_iterator(cfg, 64, seed=4), 3)
  assert a[0]['image'].shape == (64, 16, 16, 1) and a[0]['image'].dtype == np.float32
  assert a[0]['label'].shape == (64,) and a[0]['label'].dtype == np.int32
  assert set(np.concatenate([x['label'] for x in a]).tolist()) <= set(range(10))
  _assert_batches_equal(a, b)
  assert not np.array_equal(a[0]['image'], c[0]['image'])


def test_epochs_reshuffle_and_augmentations_differ(cfg):
  cfg.return_index = True
  it = pipeline.train_iterator(cfg, 479, seed=0)  # 3 batches = one epoch of 1437
  epoch0 = np.concatenate([b['index'] for b in _take(it, 3)])
  epoch1 = np.concatenate([b['index'] for b in _take(it, 3)])
  assert sorted(epoch0.tolist()) == list(range(1437)) == sorted(epoch1.tolist())
  assert not np.array_equal(epoch0, epoch1)


def test_exact_resume_in_process(cfg):
  cfg.return_index = True
  it = pipeline.train_iterator(cfg, 128, seed=7)
  _take(it, 9)
  state = it.get_state()
  expected = _take(it, 5)  # crosses the epoch boundary (11 batches per epoch)
  resumed = pipeline.train_iterator(cfg, 128, seed=7)
  resumed.set_state(state)
  _assert_batches_equal(_take(resumed, 5), expected)


def test_exact_resume_with_worker_processes(cfg):
  cfg.return_index = True
  reference = _take(pipeline.train_iterator(cfg, 32, seed=11), 8)
  cfg.num_workers = 2
  it = pipeline.train_iterator(cfg, 32, seed=11)
  first = _take(it, 5)
  state = it.get_state()
  _assert_batches_equal(first, reference[:5])  # workers do not change the data
  resumed = pipeline.train_iterator(cfg, 32, seed=11)
  resumed.set_state(state)
  _assert_batches_equal(_take(resumed, 3), reference[5:])
  for x in (it, resumed):
    close = getattr(x, 'close', None)
    if close is not None:
      close()


@pytest.mark.parametrize('num_hosts', [3, 4])
def test_hosts_see_disjoint_examples_whose_union_is_the_epoch(cfg, num_hosts):
  cfg.return_index = True
  per_host = 1437 // num_hosts
  seen = []
  for host in range(num_hosts):
    it = pipeline.train_iterator(cfg, per_host, seed=5, process_index=host, process_count=num_hosts)
    seen.append(next(it)['index'])
  flat = np.concatenate(seen)
  assert len(set(flat.tolist())) == len(flat) == per_host * num_hosts  # disjoint
  single = next(pipeline.train_iterator(cfg, 1437, seed=5))['index']  # the whole first epoch, one host
  assert sorted(single.tolist()) == list(range(1437))
  # Host h's batch is the h-th block of the global order, so together they cover the epoch.
  for host in range(num_hosts):
    np.testing.assert_array_equal(seen[host], single[host * per_host:(host + 1) * per_host])
  assert set(flat.tolist()) | set(single[per_host * num_hosts:].tolist()) == set(range(1437))


def test_global_batches_do_not_depend_on_the_host_count(cfg):
  """Hosts' batches stacked in process order (what sharding.global_batch builds) equal one host's batches with
  the global batch size, pixels included: a run's data and masks are the same on 1 host or on N."""
  one = pipeline.train_iterator(cfg, 24, seed=3)
  hosts = [pipeline.train_iterator(cfg, 8, seed=3, process_index=p, process_count=3) for p in range(3)]
  for _ in range(70):  # 70 x 24 > 1437: crosses an epoch boundary
    single = next(one)
    stacked = [next(it) for it in hosts]
    for key in single:
      np.testing.assert_array_equal(np.concatenate([b[key] for b in stacked]), single[key])


def test_missing_dataset_and_split_errors(cfg, tmp_path):
  cfg.name = 'no_such_dataset'
  with pytest.raises(FileNotFoundError, match=r"dataset 'no_such_dataset' not found under .*prepare it with"):
    pipeline.dataset_info(cfg)
  cfg.name = 'mim_digits'
  cfg.data_dir = str(tmp_path / 'missing')
  other = pipeline.default_data_config('imagenet2012')
  other.data_dir = str(tmp_path / 'missing')
  with pytest.raises(FileNotFoundError, match='does not exist'):
    pipeline.dataset_info(other)


def test_unknown_split_lists_available(cfg):
  with pytest.raises(ValueError, match=r"split 'validation' does not exist.*\['test', 'train'\]"):
    pipeline.eval_arrays(cfg, split='validation')


@pytest.mark.parametrize('field,value,match', [
  ('image_size', 0, 'image_size'),
  ('crop_scale', (0.5, 2.0), 'crop_scale'),
  ('crop_ratio', (2.0, 1.0), 'crop_ratio'),
  ('num_workers', -1, 'num_workers'),
  ('interpolation', 'cubic', 'interpolation'),
])
def test_bad_config_values(cfg, field, value, match):
  cfg[field] = value
  with pytest.raises(ValueError, match=match):
    pipeline.dataset_info(cfg)


def test_bad_iterator_arguments(cfg):
  with pytest.raises(ValueError, match='batch_size_per_host'):
    pipeline.train_iterator(cfg, 0, seed=0)
  with pytest.raises(ValueError, match='process_index'):
    pipeline.train_iterator(cfg, 8, seed=0, process_index=2, process_count=2)
  with pytest.raises(ValueError, match='fewer than one'):
    pipeline.train_iterator(cfg, 1000, seed=0, process_count=2)


def test_data_dir_resolution(monkeypatch, tmp_path):
  monkeypatch.setenv(sources.ENV_DATA_DIR, str(tmp_path / 'env'))
  assert sources.resolve_data_dir(None) == str(tmp_path / 'env')
  assert sources.resolve_data_dir(str(tmp_path / 'cfg')) == str(tmp_path / 'cfg')
  monkeypatch.delenv(sources.ENV_DATA_DIR)
  assert sources.resolve_data_dir(None) == os.path.expanduser('~/.cache/mim_jax/tensorflow_datasets')


def _build(d):
  digits.ensure_digits(d)


def test_concurrent_builds_are_safe(tmp_path):
  d = str(tmp_path / 'race')
  ctx = multiprocessing.get_context('spawn')  # fork is unsafe once jax (other test files) has started threads
  procs = [ctx.Process(target=_build, args=(d,)) for _ in range(2)]
  for p in procs:
    p.start()
  for p in procs:
    p.join(60)
  assert [p.exitcode for p in procs] == [0, 0]
  assert os.listdir(os.path.join(d, 'mim_digits')) == [digits.VERSION]
  path = digits.ensure_digits(d)  # idempotent: nothing is rebuilt
  mtime = os.path.getmtime(os.path.join(path, 'dataset_info.json'))
  assert digits.ensure_digits(d) == path
  assert os.path.getmtime(os.path.join(path, 'dataset_info.json')) == mtime
  assert len(tfds.data_source('mim_digits', data_dir=d)['test']) == 360


def test_random_resized_crop_boxes_stay_in_range():
  rng = np.random.default_rng(0)
  op = transforms.RandomResizedCrop(16, scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3), subpixel=True)
  for _ in range(200):
    x0, y0, x1, y1 = op.get_box(8, 8, rng)
    assert 0 <= x0 < x1 <= 8 and 0 <= y0 < y1 <= 8
    assert 0.6 * 64 - 1e-6 <= (x1 - x0) * (y1 - y0) <= 64 + 1e-6
  op = transforms.RandomResizedCrop(224, scale=(0.2, 1.0))
  for _ in range(200):
    x0, y0, x1, y1 = op.get_box(500, 375, rng)
    assert all(float(v).is_integer() for v in (x0, y0, x1, y1))
    assert 0 <= x0 < x1 <= 500 and 0 <= y0 < y1 <= 375


def test_iterator_state_round_trips_through_an_orbax_checkpoint(cfg, tmp_path):
  import grain
  import orbax.checkpoint as ocp

  cfg.return_index = True
  it = pipeline.train_iterator(cfg, 32, seed=1)
  _take(it, 3)
  mngr = ocp.CheckpointManager(str(tmp_path / 'ckpt'))
  mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  mngr.wait_until_finished()
  expected = _take(it, 3)
  resumed = pipeline.train_iterator(cfg, 32, seed=1)
  ocp.CheckpointManager(str(tmp_path / 'ckpt')).restore(
    3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
  _assert_batches_equal(_take(resumed, 3), expected)


def test_split_slices_read_like_splits(cfg):
  """tfds slices (a seeded validation slice held out of train) on a dataset held in memory: sizes, data, eval."""
  sliced = cfg.copy_and_resolve_references()
  sliced.train_split, sliced.eval_split = 'train[:1000]', 'train[1000:]'
  info = pipeline.dataset_info(sliced)
  assert (info.num_train, info.num_eval) == (1000, 437)
  held_out = pipeline.eval_arrays(sliced)
  whole = pipeline.eval_arrays(cfg, split='train')
  np.testing.assert_array_equal(held_out['label'], whole['label'][1000:])
  assert next(pipeline.train_iterator(sliced, 8, seed=0))['image'].shape == (8, 16, 16, 1)
