"""Base class for mim_jax's own tfds builders (bundled digits, folder converter): local, offline, no TF."""

from __future__ import annotations

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
