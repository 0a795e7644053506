"""Base class for mim_jax's own tfds builders (bundled digits, folder converter): local, offline, no TF."""

from __future__ import annotations

import contextlib
import io
import fcntl
import os
import tempfile
import time
from collections.abc import Callable

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


def build_once(data_dir: str, name: str, version: str, make_builder: Callable[[], tfds.core.DatasetBuilder]) -> str:
  """``DATA_DIR/name/version`` of a dataset mim_jax builds itself, building it first if needed: under the file
  lock (racing processes build it once; tfds writes into ``incomplete.*`` and renames it when complete), offline
  (no GCS, nothing downloaded). ``make_builder()`` is called only when a build is needed."""
  path = os.path.join(data_dir, name, version)
  done = lambda: os.path.exists(os.path.join(path, 'dataset_info.json'))  # noqa: E731
  if done():
    return path
  with file_lock(data_dir, name):
    if not done():  # another process may have built it while we waited for the lock
      # tfds words every build as a download ("Downloading and preparing ... downloaded and prepared") and draws
      # progress bars into logs: nothing is downloaded here, so say what happens in one line each way instead.
      print(f'building the bundled dataset {name} under {data_dir} (once; nothing is downloaded) ...', flush=True)
      start = time.time()
      builder = make_builder()
      tfds.display_progress_bar(False)
      try:
        with tempfile.TemporaryDirectory(prefix=f'{name}_dl_') as download_dir, \
            contextlib.redirect_stdout(io.StringIO()):
          builder.download_and_prepare(download_dir=download_dir, download_config=tfds.download.DownloadConfig(
              try_download_gcs=False, download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
      finally:
        tfds.display_progress_bar(True)
      print(f'built {name} in {time.time() - start:.0f} s: {path}', flush=True)
  return path
