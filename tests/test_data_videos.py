"""Video folders -> ArrayRecord of JPEG frames (PyAV decodes), and clips read from it: frames in order, the stride,
the centred evaluation clip, one crop for every frame, unreadable files skipped and reported."""

import json
import os

import numpy as np
import pytest

av = pytest.importorskip('av', reason='PyAV (pip install av) reads video files')

from mim_jax.data import videos  # noqa: E402

LEVELS = [10 + 20 * t for t in range(12)]  # frame t is gray level 10 + 20 t, with one channel at 250 per class


def _write(path, color, levels=LEVELS):
  with av.open(str(path), 'w') as c:
    s = c.add_stream('mpeg4', rate=10)
    s.width, s.height, s.pix_fmt = 64, 48, 'yuv420p'
    for lv in levels:
      img = np.full((48, 64, 3), lv, np.uint8)
      img[:, :, color] = 250
      for p in s.encode(av.VideoFrame.from_ndarray(img, format='rgb24')):
        c.mux(p)
    for p in s.encode():
      c.mux(p)


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  src, out = tmp_path_factory.mktemp('videos'), tmp_path_factory.mktemp('data')
  for cls, color in (('blue', 2), ('red', 0)):
    (src / cls).mkdir()
    for i in range(3):
      _write(src / cls / f'v{i}.mp4', color)
  (src / 'red' / 'broken.mp4').write_text('not a video')
  path = videos.prepare_videos(str(src), str(out), 'tiny_videos', short_side=32, val_fraction=0.34, progress=False)
  return out, path


def test_conversion_stores_every_frame_and_reports_unreadable_files(dataset):
  out, path = dataset
  from mim_jax.data import sources

  ds = sources.open_dataset('tiny_videos', str(out))
  assert ds.splits == {'train': 4, 'validation': 2} and ds.num_classes == 2
  record = sources.data_source(ds, 'train')[0]
  assert len(record['frame_offsets']) == 13  # 12 frames
  report = json.load(open(os.path.join(out, 'tiny_videos_prepare_report.json')))
  assert [s['file'] for s in report['skipped']] == ['red/broken.mp4']
  assert 'Invalid data' in report['skipped'][0]['reason']


def test_clips_take_strided_frames_in_order_with_one_crop(dataset):
  out, _ = dataset
  from mim_jax.data import sources

  ds = sources.open_dataset('tiny_videos', str(out))
  record = sources.data_source(ds, 'validation')[0]
  make = videos.StoredClipRecord(frames=4, stride=2, size=16, channels=3, crop_scale=(0.5, 1.0), train=False,
                                 label_key='label')
  clip = make(record)
  assert clip['video'].shape == (4, 16, 16, 3) and clip['video'].dtype == np.uint8
  gray = 1  # green: no class paints it
  levels = clip['video'][:, 8, 8, gray].astype(int)
  np.testing.assert_allclose(levels, [LEVELS[i] for i in (2, 4, 6, 8)], atol=8)  # centred: 12 - 7 = 5 -> start 2
  train = videos.StoredClipRecord(4, 2, 16, 3, (0.5, 1.0), True, 'label')
  starts = set()
  for seed in range(60):
    v = train(record, np.random.default_rng(seed))['video'][:, :, :, gray].astype(int)
    assert np.abs(v - v[:, :1, :1]).max() <= 8  # the same crop box in every frame: each frame stays flat
    steps = np.diff(v[:, 8, 8])
    assert (np.abs(steps - 40) <= 10).all()  # stride 2: 2 x 20 levels per clip frame
    starts.add(int(round((v[0, 8, 8] - 10) / 20)))
  assert starts == {0, 1, 2, 3, 4, 5}  # uniform start over the 12 - 7 + 1 positions
  np.testing.assert_array_equal(videos.clip_indices(3, 4, 2, None), [0, 2, 2, 2])  # too short: last frame repeats


def test_bad_input_gets_one_line_errors(tmp_path, dataset):
  with pytest.raises(ValueError, match='no files found'):
    videos.prepare_videos(str(tmp_path), str(tmp_path / 'out'), 'empty', progress=False)
  with pytest.raises(ValueError, match='--every must be a positive'):
    videos.prepare_videos(str(tmp_path), str(tmp_path / 'out'), 'x', every=0, progress=False)
  make = videos.StoredClipRecord(4, 2, 16, 3, (0.5, 1.0), False, 'label')
  with pytest.raises(ValueError, match="reads datasets converted by mim_jax.data.videos"):
    make({'image': b'', 'label': 0})


def test_multi_view_testing_spreads_segments_over_the_video(dataset):
  out, _ = dataset
  from mim_jax.data import sources

  record = sources.data_source(sources.open_dataset('tiny_videos', str(out)), 'validation')[0]
  make = videos.StoredClipRecord(4, 2, 16, 3, (0.5, 1.0), False, 'label', views=(2, 3))
  clip = make(record)['video']
  assert clip.shape == (6, 4, 16, 16, 3)  # segments outer, crops inner (VideoMAE's order)
  first = clip[:, 0, 8, 8, 1].astype(int)  # the green level of each view's first frame
  np.testing.assert_allclose(first[:3], LEVELS[0], atol=8)  # segment 0 starts at frame 0
  np.testing.assert_allclose(first[3:], LEVELS[5], atol=8)  # segment 1 at the last start, 12 - 7 = 5
  with pytest.raises(ValueError, match='test_views must be'):
    videos.StoredClipRecord(4, 2, 16, 3, (0.5, 1.0), False, 'label', views=(0, 3))
