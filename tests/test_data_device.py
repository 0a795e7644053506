"""uint8 batches normalized on the device, and the JPEG decoding-scale choice of the throughput work."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mim_jax.data import device, digits, pipeline, sample_images, transforms


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp('tfds'))
  digits.ensure_digits(d)
  return d


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
  assert pipeline.default_data_config('imagenet2012').normalize_on_device
  assert not pipeline.default_data_config('mim_digits').normalize_on_device
  bad = ml_collections.ConfigDict({**cfg.to_dict(), 'normalize_on_device': 'yes'})  # e.g. from a JSON config
  with pytest.raises(ValueError, match='normalize_on_device must be True or False'):
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
