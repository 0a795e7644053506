"""Base class for mim_jax's own tfds builders (bundled digits, folder converter): local, offline, no TF."""

from __future__ import annotations

import contextlib
import fcntl
import os

import tensorflow_datasets as tfds


class LocalBuilder(tfds.core.GeneratorBasedBuilder):
  """A GeneratorBasedBuilder whose data is generated locally (no download, no checksums file).

  tfds locates a builder's source folder (`code_path`) to look for a `checksums.tsv`; for builders living
  inside an installed package that lookup imports the optional `importlib_resources` package, which we do not
  need: we download nothing, so there is no checksums file to find.
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None


@contextlib.contextmanager
def file_lock(data_dir: str, name: str):
  """An exclusive flock on DATA_DIR/.NAME.lock (creating DATA_DIR), with a clear error if it is not writable:
  processes racing to build one dataset build it once."""
  try:
    os.makedirs(data_dir, exist_ok=True)
    f = open(os.path.join(data_dir, f'.{name}.lock'), 'a+')
  except OSError as e:
    raise OSError(f'cannot build the {name} dataset under {data_dir} ({e}); point data.data_dir or '
                  '$MIM_JAX_DATA_DIR at a writable folder') from e
  with f:
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f.fileno(), fcntl.LOCK_UN)
