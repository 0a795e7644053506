"""The image-folder converter (python -m mim_jax.data.prepare): bad files, conversions, layouts, idempotence."""

import io
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mim_jax.data import pipeline, prepare, sample_images

SIZE = (96, 72)


def _photo(rng, photos, size=SIZE):
  return sample_images.random_photo(photos, rng, size)


@pytest.fixture(scope='module')
def photos():
  return sample_images.source_photos()


def _write_class_tree(root, photos, per_class=8, classes=('cat', 'dog', 'fish')):
  """Good JPEGs in class folders plus one of each awkward case; returns {relative path: expected outcome}."""
  rng = np.random.default_rng(0)
  expect = {}
  for c in classes:
    os.makedirs(os.path.join(root, c), exist_ok=True)
    for i in range(per_class):
      rel = f'{c}/{i:03d}.jpg'
      _photo(rng, photos).save(os.path.join(root, rel), quality=int(rng.integers(75, 96)))
      expect[rel] = 'ok'
  cat = os.path.join(root, 'cat')
  _photo(rng, photos).convert('L').save(os.path.join(cat, 'gray.jpg'))
  _photo(rng, photos).convert('CMYK').save(os.path.join(cat, 'cmyk.jpg'))
  rgba = _photo(rng, photos).convert('RGBA')
  rgba.putalpha(100)
  rgba.save(os.path.join(cat, 'alpha.png'))
  _photo(rng, photos).convert('P').save(os.path.join(cat, 'palette.gif'))
  _photo(rng, photos, size=(5, 3)).save(os.path.join(cat, 'tiny.jpg'))
  Image.fromarray(np.full((48, 64), 7, np.uint16) * 1000).save(os.path.join(cat, 'sixteen_bit.png'))
  expect.update({f'cat/{n}': 'ok' for n in ('gray.jpg', 'cmyk.jpg', 'alpha.png', 'palette.gif', 'tiny.jpg',
                                            'sixteen_bit.png')})
  good = io.BytesIO()
  _photo(rng, photos).save(good, format='JPEG', quality=90)
  data = good.getvalue()
  with open(os.path.join(cat, 'truncated.jpg'), 'wb') as f:
    f.write(data[:len(data) // 2])
  with open(os.path.join(cat, 'garbage.jpg'), 'wb') as f:
    f.write(os.urandom(2000))
  with open(os.path.join(cat, 'notes.txt'), 'w') as f:
    f.write('not an image')
  open(os.path.join(cat, 'empty.jpg'), 'wb').close()
  with open(os.path.join(cat, '.DS_Store'), 'wb') as f:
    f.write(b'\0\0')
  with open(os.path.join(root, 'stray.jpg'), 'wb') as f:
    f.write(data)
  os.symlink('/nonexistent/target.jpg', os.path.join(cat, 'dangling.jpg'))  # issue 27, item 14
  expect.update({
    'cat/dangling.jpg': 'broken link',
    'cat/truncated.jpg': 'truncated', 'cat/garbage.jpg': 'not an image', 'cat/notes.txt': 'not an image',
    'cat/empty.jpg': 'empty', 'cat/.DS_Store': 'hidden', 'stray.jpg': 'outside any class folder',
  })
  return expect


@pytest.fixture(scope='module')
def converted(tmp_path_factory, photos):
  src = str(tmp_path_factory.mktemp('src'))
  out = str(tmp_path_factory.mktemp('out'))
  expect = _write_class_tree(src, photos)
  result = prepare.prepare(src, out, name='pets', val_fraction=0.25, workers=2, progress=False)
  return src, out, expect, result


def test_dataset_readable_and_report_lists_every_skip(converted):
  _check_converted(*converted)


def test_a_few_hundred_jpegs(tmp_path, photos):
  """The issue's acceptance case at its size: 300 JPEGs plus the corrupt / grayscale / tiny / odd ones."""
  src, out = str(tmp_path / 'src'), str(tmp_path / 'out')
  expect = _write_class_tree(src, photos, per_class=100)
  result = prepare.prepare(src, out, name='pets', val_fraction=0.1, workers=2, progress=False)
  _check_converted(src, out, expect, result)
  assert sum(v == 'ok' for v in expect.values()) == 306


def _check_converted(src, out, expect, result):
  assert result.rebuilt and os.path.exists(result.report_path)
  report = json.load(open(result.report_path))
  skipped = {s['file']: s['reason'] for s in report['skipped']}
  bad = {k: v for k, v in expect.items() if v != 'ok'}
  assert set(skipped) == set(bad)
  for rel, why in bad.items():
    assert why in skipped[rel], (rel, skipped[rel])
  good = [k for k, v in expect.items() if v == 'ok']
  ds = tfds.data_source('pets', data_dir=out)
  assert len(ds['train']) + len(ds['validation']) == len(good) == sum(report['written'].values())
  assert len(ds['validation']) > 0
  names = set()
  for split in ('train', 'validation'):
    for rec in ds[split].__getitems__(range(len(ds[split]))):
      assert rec['image'].ndim == 3 and rec['image'].shape[-1] == 3 and rec['image'].dtype == np.uint8
      name = rec['file_name'].decode()
      names.add(name)
      assert rec['label'] == ['cat', 'dog', 'fish'].index(name.split('/')[0])
  assert names == set(good)
  assert report['tiny_images_kept'] == 1
  for kind in ('CMYK -> RGB', 'L -> RGB', 'RGBA -> RGB', 'PNG -> JPEG', 'GIF -> JPEG', 'P -> RGB'):
    assert report['converted'].get(kind, 0) >= 1, kind


def test_rgb_jpegs_are_stored_byte_for_byte(converted):
  src, out, _, _ = converted
  ds = tfds.data_source('pets', data_dir=out, decoders={'image': tfds.decode.SkipDecoding()})
  rec = next(r for r in ds['train'].__getitems__(range(len(ds['train'])))
             if r['file_name'] == b'dog/000.jpg' or r['file_name'] == b'dog/001.jpg')
  with open(os.path.join(src, rec['file_name'].decode()), 'rb') as f:
    assert rec['image'] == f.read()


def test_pipeline_reads_converted_dataset(converted):
  _, out, _, result = converted
  cfg = pipeline.default_data_config('pets')
  cfg.data_dir = out
  cfg.image_size = 32
  info = pipeline.dataset_info(cfg)
  assert info.image_shape == (32, 32, 3) and info.num_classes == 3
  assert info.mean == tuple(result.report['mean']) and all(0 < s < 1 for s in info.std)
  batch = next(pipeline.train_iterator(cfg, 8, seed=0))
  assert batch['image'].shape == (8, 32, 32, 3) and batch['image'].dtype == np.float32
  assert np.isfinite(batch['image']).all() and set(batch['label'].tolist()) <= {0, 1, 2}
  arrays = pipeline.eval_arrays(cfg)
  assert arrays['image'].shape == (info.num_eval, 32, 32, 3)


def test_rerun_is_idempotent_and_detects_changed_sources(converted):
  src, out, _, result = converted
  info_file = os.path.join(result.path, 'dataset_info.json')
  mtime = os.path.getmtime(info_file)
  again = prepare.prepare(src, out, name='pets', val_fraction=0.25, workers=2, progress=False)
  assert not again.rebuilt and os.path.getmtime(info_file) == mtime
  with open(os.path.join(src, 'dog', 'new.jpg'), 'wb') as f:
    f.write(open(os.path.join(src, 'dog', '000.jpg'), 'rb').read())
  try:
    with pytest.raises(FileExistsError, match='--overwrite'):
      prepare.prepare(src, out, name='pets', val_fraction=0.25, workers=1, progress=False)
  finally:
    os.remove(os.path.join(src, 'dog', 'new.jpg'))


def test_flat_unlabelled_folder(tmp_path, photos):
  rng = np.random.default_rng(1)
  src = tmp_path / 'flat'
  src.mkdir()
  for i in range(10):
    _photo(rng, photos).save(src / f'{i}.jpg')
  out = str(tmp_path / 'out')
  result = prepare.prepare(str(src), out, val_fraction=0.2, workers=1, progress=False)
  assert result.report['layout'] == 'unlabelled (flat)'
  assert result.report['classes'] is None and result.report['written'] == {'train': 8, 'validation': 2}
  # With --unlabelled, images in subfolders are collected recursively instead of becoming classes.
  (src / 'nested').mkdir()
  _photo(rng, photos).save(src / 'nested' / 'extra.jpg')
  scanned = prepare.scan(str(src), val_fraction=0.0, unlabelled=True)
  assert scanned.class_names is None and len(scanned.splits['train']) == 11
  cfg = pipeline.default_data_config('flat')
  cfg.data_dir = out
  cfg.image_size = 16
  info = pipeline.dataset_info(cfg)
  assert info.num_classes is None and (info.num_train, info.num_eval) == (8, 2)
  batch = next(pipeline.train_iterator(cfg, 4, seed=0))
  assert (batch['label'] == -1).all()


def test_train_val_layout_and_cli(tmp_path, photos, capsys):
  rng = np.random.default_rng(2)
  for split, n in (('train', 4), ('val', 2)):
    for c in ('a', 'b'):
      d = tmp_path / 'src' / split / c
      d.mkdir(parents=True)
      for i in range(n):
        _photo(rng, photos).save(d / f'{i}.jpg')
  out = str(tmp_path / 'out')
  assert prepare.main(['--src', str(tmp_path / 'src'), '--out', out, '--name', 'ab', '--workers', '1',
                       '--no-progress']) == 0
  assert 'examples written' in capsys.readouterr().out
  ds = tfds.data_source('ab', data_dir=out)
  assert (len(ds['train']), len(ds['validation'])) == (8, 4)
  assert prepare.main(['--src', str(tmp_path / 'missing'), '--out', out]) == 2
  assert 'is not a directory' in capsys.readouterr().err
  assert prepare.main(['--src', str(tmp_path / 'src'), '--out', out, '--name', 'Bad Name']) == 2


def test_a_folder_without_a_readable_image_is_one_error_and_leaves_no_dataset(tmp_path):
  # Issue 27, item 14: not tfds's AssertionError, and no empty dataset folder among the data dir's datasets.
  src = tmp_path / 'src' / 'a'
  src.mkdir(parents=True)
  (src / '1.jpg').write_bytes(b'not a jpeg')
  os.symlink('/nonexistent.jpg', src / '2.jpg')
  out = tmp_path / 'out'
  with pytest.raises(ValueError, match='no readable image') as e:
    prepare.prepare(str(tmp_path / 'src'), str(out), name='allbad', workers=0, progress=False)
  assert 'nothing was written' in str(e.value) and '\n' not in str(e.value)
  assert not (out / 'allbad').exists()
