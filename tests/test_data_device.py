"""uint8 batches normalized on the device, and the JPEG decoding-scale choice of the throughput work."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mim_jax.data import device, device_crop, pipeline, sample_images, transforms


@pytest.fixture
def cfg(data_dir):
  c = pipeline.default_data_config()
  c.data_dir = data_dir
  c.return_index = True
  return c


def test_uint8_batches_hold_the_same_examples_and_normalize_to_the_host_batches(cfg):
  info = pipeline.dataset_info(cfg)
  host = pipeline.train_iterator(cfg, 32, seed=2)
  cfg.normalize_on_device = True
  raw = pipeline.train_iterator(cfg, 32, seed=2, allow_uint8_images=True)
  for _ in range(2):
    a, b = next(host), next(raw)
    assert a['image'].dtype == np.float32 and b['image'].dtype == np.uint8
    np.testing.assert_array_equal(a['index'], b['index'])
    np.testing.assert_array_equal(a['label'], b['label'])
    on_device = device.normalize({k: jnp.asarray(v) for k, v in b.items()}, info)
    assert on_device['image'].dtype == jnp.float32 and set(on_device) == set(b)
    np.testing.assert_allclose(np.asarray(on_device['image']), a['image'], rtol=1e-6, atol=1e-6)


def test_uint8_needs_both_the_config_and_the_caller(cfg):
  cfg.normalize_on_device = True
  assert next(pipeline.train_iterator(cfg, 8, seed=0))['image'].dtype == np.float32  # caller did not opt in
  cfg.normalize_on_device = False
  assert next(pipeline.train_iterator(cfg, 8, seed=0, allow_uint8_images=True))['image'].dtype == np.float32
  # None (the default): on the device when jax runs on an accelerator, on the host on a CPU-only machine.
  assert pipeline.default_data_config('imagenet2012').normalize_on_device is None
  cfg.normalize_on_device = None
  expected = np.float32 if jax.default_backend() == 'cpu' else np.uint8
  assert next(pipeline.train_iterator(cfg, 8, seed=0, allow_uint8_images=True))['image'].dtype == expected
  bad = ml_collections.ConfigDict({**cfg.to_dict(), 'normalize_on_device': 'yes'})  # e.g. from a JSON config
  with pytest.raises(ValueError, match='normalize_on_device must be None'):
    pipeline.dataset_info(bad)


def test_device_normalize_keeps_float_batches_and_sharding():
  info = pipeline.DatasetInfo((4, 4, 3), 0, 0, None, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
  floats = {'image': jnp.ones((2, 4, 4, 3), jnp.float32)}
  assert device.normalize(floats, info) is floats
  x = np.random.default_rng(0).integers(0, 256, (len(jax.devices()) * 2, 4, 4, 3), dtype=np.uint8)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  out = device.normalize({'image': jax.device_put(x, sharding)}, info)['image']
  assert out.sharding.is_equivalent_to(sharding, 4)
  ref = (x / 255.0 - np.array(info.mean)) / np.array(info.std)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='channels'):
    device.normalize({'image': jnp.zeros((1, 4, 4, 1), jnp.uint8)}, info)


def test_dct_scale_choice_balances_decode_and_resize_cost():
  # 450x420 photo, crop resized to 224: a crop needing >= 7/8 of the pixels is decoded at full size (7/8 is a
  # slow non-SIMD scale), a large crop at 5/8 or 6/8, where the smaller resize pays for the slower decode.
  need = lambda side: (side, side)  # noqa: E731
  assert transforms.dct_eighths(450, 420, *need(380), box_fraction=0.7) == 8
  assert transforms.dct_eighths(450, 420, *need(263), box_fraction=0.9) == 5
  assert transforms.dct_eighths(450, 420, *need(263), box_fraction=0.05) == 8  # small crop: decode dominates
  assert transforms.dct_eighths(900, 900, *need(225), box_fraction=0.9) == 2  # the SIMD 1/4 scale
  assert transforms.dct_eighths(450, 420, 451, 10) == 8  # nothing smaller is large enough
  for m in range(1, 9):  # never upsamples: the decoded image keeps the requested size
    got = transforms.dct_eighths(450, 420, 56 * m, 52 * m, box_fraction=1.0)
    assert -(-450 * got // 8) >= 56 * m and -(-420 * got // 8) >= 52 * m


@pytest.mark.skipif(transforms.resolve_decoder('auto') != 'simplejpeg', reason='simplejpeg not installed')
@pytest.mark.parametrize('mode', ['RGB', 'L'])
def test_simplejpeg_rgbx_path_returns_plain_images_close_to_pil(mode):
  photo = sample_images.random_photo(sample_images.source_photos(), np.random.default_rng(3), size=(450, 420))
  data = sample_images.jpeg_bytes(photo, 90)
  box = (40.0, 30.0, 400.0, 390.0)  # 360 px crop -> 224: decoded at 5/8
  outs = {}
  for dec in ('pil_full', 'simplejpeg', 'simplejpeg_fast'):
    img = transforms.LazyImage(data, mode, dec).crop_resize(box, (224, 224), transforms.resample_filter('bicubic'))
    assert img.mode == mode and img.size == (224, 224)
    outs[dec] = np.asarray(img, np.float32)
  for dec in ('simplejpeg', 'simplejpeg_fast'):
    assert np.abs(outs[dec] - outs['pil_full']).mean() < 3.0, dec


def _resize_on_device(records, transform, info):
  """Host half (DeviceCrop + CanvasCollate) and device half (device.preprocess) of data.resize_on_device."""
  batch = device_crop.CanvasCollate(transform.canvas, transform.channels)(records)
  out = device.preprocess({k: jnp.asarray(v) for k, v in batch.items()}, info)
  assert set(out) == {'image', 'label'}  # the canvas keys are consumed
  return np.asarray(out['image']) * np.array(info.std) * 255 + np.array(info.mean) * 255, batch


def _photo_cfg(decoder):
  c = pipeline.default_data_config('photos')
  c.decoder = decoder
  c.image_size = 64
  c.resize_on_device = True
  return c


@pytest.mark.parametrize('channels', [3, 1])
def test_resize_on_device_reproduces_the_host_crops(channels):
  """Same seed -> same crops and flips as the host transform; PIL's filter on the device agrees with PIL on
  the host up to the order of its two passes (each rounds to uint8): a small fraction of pixels off by 1+."""
  cfg = _photo_cfg('pil_full')  # full-size decoding on both sides: only the resampling differs
  info = pipeline.DatasetInfo((64, 64, channels), 0, 0, None, (0.4,) * channels, (0.25,) * channels)
  host = transforms.build_train_transform(cfg, channels)
  on_device = device_crop.build(cfg, channels)
  photos = sample_images.source_photos()
  raws = [sample_images.jpeg_bytes(sample_images.random_photo(photos, np.random.default_rng(i), size=size), 90)
          for i, size in enumerate([(450, 420), (375, 500), (640, 480), (30, 20), (120, 90), (500, 333)])]
  raws.append(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))  # a raw-array record
  rngs = lambda: [np.random.default_rng([7, i]) for i in range(len(raws))]  # noqa: E731
  expected = np.stack([host(r, g) for r, g in zip(raws, rngs())]).astype(np.float32)
  records = [dict(on_device(r, g), label=np.int32(0)) for r, g in zip(raws, rngs())]
  got, batch = _resize_on_device(records, on_device, info)
  assert batch['image'].shape == (len(raws), 128, 128, channels) and batch['image'].dtype == np.uint8
  assert batch['flip'].any() and not batch['flip'].all()  # both kinds of example are covered
  diff = np.abs(got - expected)
  assert diff.mean() < 0.1 and (diff > 1.01).mean() < 0.002, (diff.mean(), (diff > 1.01).mean())


def test_resize_on_device_falls_back_to_the_host_when_the_crop_cannot_fit():
  cfg = _photo_cfg('pil_full')
  cfg.device_canvas = 64  # = the output: a large crop's neighbourhood cannot fit
  info = pipeline.DatasetInfo((64, 64, 3), 0, 0, None, (0.4,) * 3, (0.25,) * 3)
  photo = sample_images.random_photo(sample_images.source_photos(), np.random.default_rng(5), size=(400, 300))
  raw = sample_images.jpeg_bytes(photo, 90)
  rec = device_crop.build(cfg, 3)(raw, np.random.default_rng(1))
  assert rec['image'].shape == (64, 64, 3) and rec['crop_box'].tolist() == [0, 0, 64, 64]
  got, _ = _resize_on_device([dict(rec, label=np.int32(0))], device_crop.build(cfg, 3), info)
  expected = transforms.build_train_transform(cfg, 3)(raw, np.random.default_rng(1)).astype(np.float32)
  np.testing.assert_allclose(got[0], expected, atol=0.01)  # resampling 1:1 is the identity


@pytest.mark.skipif(transforms.resolve_decoder('auto') != 'simplejpeg', reason='simplejpeg not installed')
def test_resize_on_device_with_reduced_jpeg_decoding_stays_close():
  cfg = _photo_cfg('simplejpeg')
  cfg.image_size = 112
  info = pipeline.DatasetInfo((112, 112, 3), 0, 0, None, (0.4,) * 3, (0.25,) * 3)
  photos = sample_images.source_photos()
  raws = [sample_images.jpeg_bytes(sample_images.random_photo(photos, np.random.default_rng(i), size=(900, 700)),
                                   90) for i in range(4)]
  on_device = device_crop.build(cfg, 3)
  records = [dict(on_device(r, np.random.default_rng(i)), label=np.int32(0)) for i, r in enumerate(raws)]
  # 900x700 photos at 112 px: the host decodes at a DCT scale, so the neighbourhood is smaller than the box.
  assert all(r['image'].shape[0] < 700 // 2 for r in records)
  got, _ = _resize_on_device(records, on_device, info)
  full_cfg = _photo_cfg('pil_full')
  full_cfg.image_size = 112
  full = transforms.build_train_transform(full_cfg, 3)
  expected = np.stack([full(r, np.random.default_rng(i)) for i, r in enumerate(raws)]).astype(np.float32)
  assert np.abs(got - expected).mean() < 3.0  # the DCT-domain low-pass differs slightly from PIL's


def test_resize_on_device_config_errors_only_where_canvases_are_made(cfg):
  for field, value, match in [('augment', 'none', "augment='rrc_flip' only"),
                              ('interpolation', 'lanczos', 'supports interpolation'),
                              ('device_canvas', 8, 'device_canvas must be')]:
    bad = ml_collections.ConfigDict({**cfg.to_dict(), 'resize_on_device': True, field: value})
    with pytest.raises(ValueError, match=match):
      pipeline.train_iterator(bad, 8, seed=0, allow_uint8_images=True)
    # Evaluators inheriting the pre-training config read it on the host: the setting does not apply there.
    assert next(pipeline.train_iterator(bad, 8, seed=0))['image'].dtype == np.float32


def test_resize_on_device_through_the_pipeline_matches_the_host_pipeline(cfg):
  info = pipeline.dataset_info(cfg)
  host = next(pipeline.train_iterator(cfg, 64, seed=4))
  cfg.resize_on_device = True
  raw = next(pipeline.train_iterator(cfg, 64, seed=4, allow_uint8_images=True))
  assert raw['image'].shape == (64, 32, 32, 1) and raw['image'].dtype == np.uint8
  np.testing.assert_array_equal(raw['index'], host['index'])
  out = device.preprocess({k: jnp.asarray(v) for k, v in raw.items()}, info)
  assert set(out) == {'image', 'label', 'index'} and out['image'].shape == host['image'].shape
  diff = np.abs(np.asarray(out['image']) - host['image']) * info.std[0] * 255  # in pixel levels
  assert diff.mean() < 0.1 and (diff > 1.01).mean() < 0.005, (diff.mean(), (diff > 1.01).mean())
