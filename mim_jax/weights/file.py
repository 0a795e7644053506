"""The mim_jax checkpoint file.

A mim_jax checkpoint is one ``.safetensors`` file:

* tensors: float32, named by their '/'-joined param path (``encoder/blocks_0/attn/qkv/kernel``, ``decoder/...``,
  ``fc_norm/scale``, ``head/kernel``), in mim_jax layouts (Dense kernels ``[in, out]``, patch kernel
  ``[p*p*C, D]``);
* metadata (safetensors' string map): ``format = "mim_jax"`` and ``mim_jax_model`` = the JSON of
  :class:`~mim_jax.weights.spec.ModelSpec` (patch size, width, depth, heads, mlp ratio, image size, channels,
  position table kind, norms, head, decoder dims, and pixel mean/std when known).

It needs neither torch nor orbax to read, and holds weights only (no optimizer state: resume training from the
workdir instead). ``python -m mim_jax.convert --to mim_jax`` writes it from timm, Hugging Face or official-MAE
weights, or from a workdir.
"""

from __future__ import annotations

import numpy as np

from mim_jax.weights.spec import Checkpoint, ModelSpec, flatten, unflatten
from mim_jax.weights.tensors import read_tensors, write_tensors

FORMAT = 'mim_jax'
SPEC_KEY = 'mim_jax_model'


def save(ckpt: Checkpoint, path: str) -> str:
  if not path.endswith('.safetensors'):
    raise ValueError(f'a mim_jax checkpoint is a .safetensors file; got {path!r}.')
  ckpt.check()
  tensors = {k: np.asarray(v, np.float32) for k, v in flatten(ckpt.params).items()}
  return write_tensors(path, tensors, metadata={'format': FORMAT, SPEC_KEY: ckpt.spec.to_json()})


def load(path: str) -> Checkpoint:
  """A mim_jax ``.safetensors`` file: its params and the model they run in."""
  tensors, metadata = read_tensors(path)
  if metadata.get('format') != FORMAT or SPEC_KEY not in metadata:
    raise ValueError(f'{path!r} is not a mim_jax checkpoint (its metadata has no mim_jax model description). '
                     'Convert it first: python -m mim_jax.convert --from {timm,hf_vitmae,mae_official} '
                     '--to mim_jax SRC DST.')
  return Checkpoint(unflatten(tensors), ModelSpec.from_json(metadata[SPEC_KEY])).check()
