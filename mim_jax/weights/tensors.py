"""Reading and writing flat ``{name: array}`` weight files: safetensors (no torch needed), ``.pth`` (torch), ``.npz``.

PyTorch checkpoints often wrap the state dict (``{'model': ...}`` in the official MAE releases, ``'state_dict'``
in Lightning, ``'module.'`` prefixes from DistributedDataParallel); :func:`read_tensors` unwraps them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

TORCH_SUFFIXES = ('.pth', '.pt', '.bin', '.ckpt')
_WRAPPERS = ('model', 'state_dict', 'module', 'model_state')


def _require_torch(path: str):
  try:
    import torch
  except ImportError:
    raise ImportError(f'reading or writing {path!r} needs PyTorch: install the CPU wheel (pip install torch), '
                      'or use a .safetensors file, which needs no torch.') from None
  return torch


def _unwrap(obj, path: str) -> Mapping:
  for _ in range(3):  # e.g. {'model': {'module.x': ...}} from a DDP run
    if isinstance(obj, Mapping):
      inner = [k for k in _WRAPPERS if k in obj and isinstance(obj[k], Mapping)]
      if inner and not any(hasattr(v, 'shape') for v in obj.values()):
        obj = obj[inner[0]]
        continue
    break
  if not isinstance(obj, Mapping) or not obj:
    raise ValueError(f'{path!r} holds no state dict (expected a mapping of names to tensors).')
  if all(k.startswith('module.') for k in obj):
    obj = {k[len('module.'):]: v for k, v in obj.items()}
  return obj


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, 'detach'):  # a torch tensor: bfloat16/float16 have no exact numpy twin worth keeping
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def read_tensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """``(tensors, metadata)`` from a .safetensors / .pth / .pt / .bin / .npz file; metadata is {} when none."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'no such checkpoint file: {path!r}')
  if not path.endswith(('.safetensors', '.npz', *TORCH_SUFFIXES)):
    raise ValueError(f'cannot tell the file type of {path!r}: use a .safetensors, .pth/.pt/.bin or .npz file.')
  if path.endswith(TORCH_SUFFIXES):
    torch = _require_torch(path)
  try:
    if path.endswith('.safetensors'):
      from safetensors import safe_open

      with safe_open(path, framework='np') as f:
        metadata = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    elif path.endswith('.npz'):
      with np.load(path, allow_pickle=False) as z:
        tensors, metadata = {k: z[k] for k in z.files}, {}
    else:
      state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # the libraries' own errors (a damaged header, not a zip, not a pickle) as one line
    reason = ' '.join(str(e).split())[:200] or type(e).__name__
    if 'bfloat16' in reason:
      raise ValueError(f'{path} holds bfloat16 tensors, which numpy cannot read: save it in float32 (in torch: '
                       '{k: v.float() for k, v in state.items()}) and read that.') from None
    raise ValueError(f'{path} is not a readable {os.path.splitext(path)[1]} weights file ({reason}): it may be '
                     'damaged or another format; check the path, or export it again (python -m mim_jax.convert).'
                     ) from None
  if path.endswith(TORCH_SUFFIXES):
    tensors, metadata = {k: _to_numpy(v) for k, v in _unwrap(state, path).items() if hasattr(v, 'shape')}, {}
  return {k: (v.astype(np.float32) if v.dtype.kind == 'f' else v) for k, v in tensors.items()}, metadata


def write_tensors(path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None,
                  torch_wrapper: str | None = None) -> str:
  """Writes float32 tensors; ``torch_wrapper='model'`` nests a .pth state dict as the official MAE loader expects."""
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  arrays = {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in tensors.items()}
  if path.endswith('.safetensors'):
    from safetensors.numpy import save_file

    save_file(arrays, path, metadata=dict(metadata or {}))
  elif path.endswith('.npz'):
    np.savez(path, **arrays)
  elif path.endswith(TORCH_SUFFIXES):
    torch = _require_torch(path)
    state = {k: torch.from_numpy(v) for k, v in arrays.items()}
    torch.save({torch_wrapper: state} if torch_wrapper else state, path)
  else:
    raise ValueError(f'cannot tell which file type to write for {path!r}: end it in .safetensors, .pth or .npz.')
  return path
