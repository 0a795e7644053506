"""extract_features: batched, one compiled shape, padding stripped, order kept."""

import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax.eval.features import extract_features


def test_batches_pad_and_strip_with_one_shape():
  images = np.arange(10 * 4 * 4 * 3, dtype=np.float32).reshape(10, 4, 4, 3)
  seen_shapes = []

  def feature_fn(x):
    seen_shapes.append(x.shape)  # runs at trace time only
    return jnp.stack([x.mean(axis=(1, 2, 3)), x[:, 0, 0, 0]], axis=-1)

  out = extract_features(feature_fn, images, batch_size=4)
  assert out.shape == (10, 2)
  np.testing.assert_allclose(out[:, 0], images.mean(axis=(1, 2, 3)), rtol=1e-6)
  np.testing.assert_array_equal(out[:, 1], images[:, 0, 0, 0])
  assert seen_shapes == [(4, 4, 4, 3)]  # traced once: the last batch (2 rows) was padded to 4


def test_without_jit_every_call_gets_the_full_batch_and_bf16_comes_back_float32():
  calls = []

  def feature_fn(x):
    calls.append(x.shape[0])
    return jnp.asarray(x, jnp.bfloat16)

  out = extract_features(feature_fn, np.ones((5, 3), np.float32), batch_size=2, jit=False, progress=True)
  assert calls == [2, 2, 2]
  assert out.shape == (5, 3) and out.dtype == np.float32


def test_batch_larger_than_data_and_empty_input():
  out = extract_features(lambda x: x * 2, np.arange(3, dtype=np.float32)[:, None], batch_size=256)
  np.testing.assert_array_equal(out[:, 0], [0, 2, 4])
  with pytest.raises(ValueError, match='no images'):
    extract_features(lambda x: x, np.zeros((0, 3)), batch_size=4)
