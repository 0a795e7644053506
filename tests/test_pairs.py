"""The paired-view pipeline (mim_jax/data/pairs.py): determinism, the crop-of-crop geometry, the homography's
dense correspondence, and aligned real stereo windows."""

import numpy as np
import pytest
from PIL import Image

from mim_jax.data import pairs, pipeline


def _coord_image(w=120, h=90):
  """An RGB photo-like image whose red/green channels encode x/y (so views reveal where they came from)."""
  x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
  y = np.linspace(0, 255, h)[:, None].repeat(w, 1)
  return np.stack([x, y, (x + y) / 2], -1).astype(np.uint8)


def _cfg(kind, **kw):
  c = pairs.default_pair_config()
  c.kind = kind
  c.update(kw)
  return c


def _data_cfg(size=32):
  d = pipeline.default_data_config('mim_digits')
  d.image_size = size
  return d


SOURCE = pipeline.RecordSource('image', 'label', 3)


@pytest.mark.parametrize('kind', pairs.CROP_KINDS + ('homography',))
def test_pairs_are_deterministic_per_generator(kind):
  fn = pairs.pair_record_transform(_cfg(kind), _data_cfg(), SOURCE)
  record = {'image': _coord_image(), 'label': 3}
  a = fn(record, np.random.default_rng([7, 11]))
  b = fn(record, np.random.default_rng([7, 11]))
  c = fn(record, np.random.default_rng([7, 12]))
  assert set(a) == {'view1', 'view2', 'label'} and a['label'] == 3
  for key in ('view1', 'view2'):
    assert a[key].shape == (32, 32, 3) and a[key].dtype == np.uint8
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a['view1'], c['view1'])
  if kind == 'same_views':
    np.testing.assert_array_equal(a['view1'], a['view2'])
  else:
    assert not np.array_equal(a['view1'], a['view2'])


def test_global_to_local_view_lies_inside_the_reference():
  """The local view (view1) is a crop of the global one (view2): its coordinate colours lie in view2's range
  and span a smaller part of it."""
  fn = pairs.pair_record_transform(_cfg('global_to_local', hflip=False), _data_cfg(), SOURCE)
  record = {'image': _coord_image(400, 300), 'label': 0}
  for seed in range(5):
    out = fn(record, np.random.default_rng(seed))
    for ch in (0, 1):
      g, loc = out['view2'][..., ch].astype(int), out['view1'][..., ch].astype(int)
      assert loc.min() >= g.min() - 3 and loc.max() <= g.max() + 3
      assert np.ptp(loc) < np.ptp(g)
  swapped = pairs.pair_record_transform(_cfg('local_to_global', hflip=False), _data_cfg(), SOURCE)(
      record, np.random.default_rng(0))
  same = fn(record, np.random.default_rng(0))
  np.testing.assert_array_equal(swapped['view1'], same['view2'])
  np.testing.assert_array_equal(swapped['view2'], same['view1'])


def test_homography_maps_view1_pixels_onto_the_same_scene_points_of_view2():
  w, h = 200, 160
  xs = np.tile(np.arange(w, dtype=np.float32) + 0.5, (h, 1))
  ys = np.tile((np.arange(h, dtype=np.float32) + 0.5)[:, None], (1, w))
  rng = np.random.default_rng(3)
  size = 32
  h1, h2 = (pairs.random_view_homography(w, h, size, (0.3, 1.0), (0.75, 1.33), 0.15, rng) for _ in range(2))
  centres = np.stack(np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5), -1)
  for coords, axis in ((xs, 0), (ys, 1)):
    img = Image.fromarray(coords, mode='F')
    v1 = np.asarray(pairs.warp(img, h1, size, 'bilinear'))
    v2 = np.asarray(pairs.warp(img, h2, size, 'bilinear'))
    # Each view shows the source coordinate its homography predicts (PIL samples pixel centres at i + 0.5).
    np.testing.assert_allclose(v1[1:-1, 1:-1], pairs.apply_homography(h1, centres)[1:-1, 1:-1, axis], atol=1e-3)
    # The pair's correspondence: view1 pixel p shows the scene point view2 shows at H p.
    one_to_two = np.linalg.inv(h2) @ h1
    p2 = pairs.apply_homography(one_to_two, centres)
    inside = np.all((p2 > 1) & (p2 < size - 1), axis=-1)
    assert inside.mean() > 0.05
    sampled = np.asarray(Image.fromarray(v2, mode='F').resize((size, size)))  # identity resize: a copy
    ix, iy = np.floor(p2[..., 0]).astype(int).clip(0, size - 1), np.floor(p2[..., 1]).astype(int).clip(0, size - 1)
    err = np.abs(sampled[iy, ix] - v1)[inside]
    bound = 0.1 * w  # the nearest view2 pixel is within one view pixel, a few source pixels
    assert np.median(err) < bound


def test_homography_record_keeps_the_correspondence_when_asked():
  fn = pairs.pair_record_transform(_cfg('homography'), _data_cfg(), SOURCE, keep_homography=True)
  out = fn({'image': _coord_image(), 'label': 1}, np.random.default_rng(0))
  assert out['homography'].shape == (3, 3) and out['homography'].dtype == np.float32
  assert out['homography'][2, 2] == 1
  with pytest.raises(ValueError, match="only pairs.kind='homography'"):
    pairs.pair_record_transform(_cfg('random_views'), _data_cfg(), SOURCE, keep_homography=True)
  with pytest.raises(ValueError, match='pairs.kind must be one of'):
    pairs.pair_record_transform(_cfg('lidar'), _data_cfg(), SOURCE)


def test_stereo_windows_overlap_after_the_disparity_shift():
  """The real motorcycle pair: the right window at x - d matches the left window better than the unshifted one
  (the pairs overlap, so cross-view completion has something to use)."""
  pytest.importorskip('skimage')
  left, right, disparity = pairs.stereo_motorcycle()
  rng = np.random.default_rng(0)
  aligned, unshifted = [], []
  for _ in range(20):
    win = pairs.stereo_window_pair(left, right, disparity, 64, 128, rng)
    x, y, side = win.box
    plain = np.asarray(Image.fromarray(right[y:y + side, x:x + side]).resize((64, 64), Image.Resampling.BICUBIC))
    aligned.append(np.abs(win.view1.astype(float) - win.view2).mean())
    unshifted.append(np.abs(win.view1.astype(float) - plain).mean())
    assert win.disparity > 0
  assert np.mean(aligned) < 0.6 * np.mean(unshifted), (np.mean(aligned), np.mean(unshifted))


def test_stereo_windows_respect_the_split_columns():
  pytest.importorskip('skimage')
  left, right, disparity = pairs.stereo_motorcycle()
  rng = np.random.default_rng(1)
  for _ in range(20):
    win = pairs.stereo_window_pair(left, right, disparity, 32, 96, rng, x_range=(494, 741))
    x, _, side = win.box
    assert 494 <= x and x + side <= 741
  with pytest.raises(ValueError, match='does not fit'):
    pairs.stereo_window_pair(left, right, disparity, 32, 300, rng, x_range=(494, 741))


def test_the_stereo_dataset_builds_offline_and_serves_pairs(tmp_path):
  """mim_stereo: one stored pair presented REPEAT times per split; each read draws new windows; the pipeline
  batches them like any pair dataset."""
  pytest.importorskip('skimage')
  from mim_jax.data import stereo

  c = pipeline.default_data_config('mim_stereo')
  c.data_dir = str(tmp_path)
  info = pipeline.dataset_info(c)
  assert (info.num_train, info.num_eval, info.num_classes, info.image_shape) == (
      stereo.REPEAT['train'], stereo.REPEAT['test'], None, (64, 64, 3))
  cfg = _cfg('stereo')
  fn = lambda dc, src, train: pairs.pair_record_transform(cfg, dc, src)  # noqa: E731
  out = pipeline.eval_arrays(c, 'test', 16, fields=pairs.pair_fields((64, 64, 3)), record_transform=fn, train=True)
  assert out['view1'].shape == (16, 64, 64, 3) and np.all(out['label'] == -1)
  assert not np.allclose(out['view1'][0], out['view1'][1])  # one record, different windows
  batch = next(pipeline.train_iterator(c, 4, 0, fields=pairs.pair_fields((64, 64, 3)), record_transform=fn))
  assert batch['view2'].shape == (4, 64, 64, 3)
  with pytest.raises(ValueError, match="needs stereo records"):
    pairs.pair_record_transform(cfg, c, SOURCE)({'image': _coord_image(), 'label': 0}, np.random.default_rng(0))
