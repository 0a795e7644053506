"""What an evaluation starts from: the pre-trained encoder named by ``config.init`` (or a random one).

``config.init`` may be

* a pre-training workdir (``config.json`` + ``checkpoints/``): its method, model and data config are read from
  ``config.json`` and the params of the latest (or ``config.init_step``) checkpoint are restored;
* a converted checkpoint file, ``.npz`` or ``.safetensors``, holding official-MAE state-dict names (optionally
  prefixed ``param/``, as in the parity fixtures) or mim_jax names joined by ``/`` (``encoder/blocks_0/...``).
  A file carries no architecture: it comes from the eval config's ``model.encoder`` (e.g. ``variant='base/16'``).

With ``config.random_init=True`` the same architecture is built with freshly initialised weights (the
baseline that shows what pre-training adds); ``init`` then only supplies the architecture and data config and
may be omitted when the eval config names ``model.encoder`` and ``data.name`` itself.

The data config of the evaluation is the pre-training one with every non-None field of the eval config's
``data`` block on top (so a probe can switch off augmentation or change the split without repeating the rest).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from mim_jax import config as config_lib
from mim_jax import methods
from mim_jax import workdir as workdir_lib
from mim_jax.data import pipeline
from mim_jax.utils import tree_paths

CHECKPOINT_SUFFIXES = ('.npz', '.safetensors')


@dataclasses.dataclass
class Pretrained:
  config: ml_collections.ConfigDict  # the pre-training config (method, model, ...) with the eval's data config
  method: methods.Method
  params: Any  # host arrays: the method's params, or only {'encoder': ...} for converted files
  step: int | None  # checkpoint step; None for files and random init
  source: str  # the init path, or 'random'
  info: pipeline.DatasetInfo

  def encoder_params(self):
    return self.method.encoder_params(self.params)


def read_pretrain_config(workdir: str) -> ml_collections.ConfigDict:
  """The ``config.json`` a pre-training run wrote (:func:`mim_jax.workdir.read_config`), with the error naming
  what ``config.init`` may be."""
  try:
    return workdir_lib.read_config(workdir)
  except FileNotFoundError:
    raise FileNotFoundError(f'{workdir!r} has no config.json: config.init must be a pre-training workdir (the '
                            f'--workdir of `python -m mim_jax.main --config=configs/mae/...`) or a converted '
                            f'checkpoint file ({", ".join(CHECKPOINT_SUFFIXES)}).') from None


def merge_data_config(base: ml_collections.ConfigDict | dict | None, overrides) -> ml_collections.ConfigDict:
  """The pre-training data config (or a dataset's defaults) with the eval config's non-None fields on top."""
  overrides = {k: v for k, v in dict(overrides or {}).items() if v is not None}
  base = dict(base or {})
  clip_overrides = {k: v for k, v in dict(overrides.pop('clips', None) or {}).items() if v is not None}
  name = overrides.get('name', base.get('name'))
  if name is None:
    raise ValueError('no dataset to evaluate on: set config.init to a pre-training workdir or config.data.name '
                     "(e.g. --config.data.name=mim_digits).")
  data = pipeline.default_data_config(name).to_dict()
  if base.get('name') == name:  # same dataset: keep what pre-training used (image size, splits, stats, ...)
    data.update(base)
  data.update(overrides)
  if clip_overrides:  # field by field on top of the pre-training run's clip sampling
    if not data.get('clips'):
      raise ValueError(f'config.data.clips ({sorted(clip_overrides)}) applies to video workdirs; {name!r} was not '
                       'read as clips in pre-training: drop the data.clips overrides.')
    data['clips'] = {**dict(data['clips']), **clip_overrides}
  return ml_collections.ConfigDict(workdir_lib.json_tuples(data))


def _encoder_overrides(eval_config) -> dict:
  block = eval_config.get('model', None)
  encoder = block.get('encoder', None) if block is not None else None
  return {k: v for k, v in dict(encoder or {}).items() if v is not None}


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def load_checkpoint_file(path: str, encoder=None) -> dict:
  """``{'encoder': ...[, 'decoder': ...][, 'encoder_batch_stats': ...]}`` host arrays from an ``.npz`` /
  ``.safetensors`` file: mim_jax names (``encoder/...``), or the official names of the configured ``encoder``'s
  family: timm's ResNet / ConvNeXt, iLLaMA's, else the MAE reference's (timm's ViT)."""
  if not path.endswith(('.safetensors', '.npz')):
    raise ValueError(f'unsupported checkpoint file {path!r}; expected one of {CHECKPOINT_SUFFIXES} or a workdir.')
  from mim_jax.weights.tensors import read_tensors

  arrays, _ = read_tensors(path)
  if any(k.startswith('param/') for k in arrays):  # the parity fixtures' layout: only the params
    arrays = {k[len('param/'):]: v for k, v in arrays.items() if k.startswith('param/')}
  if any(k.startswith('encoder/') for k in arrays):
    return _unflatten({k: np.asarray(v, np.float32) for k, v in arrays.items()})
  from mim_jax.interop import official_illama, timm_convnets
  from mim_jax.models.convnets import ConvNeXtEncoder, ResNetEncoder

  if isinstance(encoder, (ResNetEncoder, ConvNeXtEncoder)):
    read = timm_convnets.resnet_from_timm if isinstance(encoder, ResNetEncoder) else timm_convnets.convnext_from_timm
    weights = read(arrays, head=False)
    return {'encoder': weights.params, **({'encoder_batch_stats': weights.batch_stats} if weights.batch_stats else {})}
  if official_illama.is_official_illama(arrays):
    return official_illama.from_official(arrays, head=False)
  from mim_jax.interop.official_mae import from_official
  return from_official(arrays)


def check_same_structure(loaded, expected, what: str) -> None:
  got = {tree_paths.path_str(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(loaded)}
  want = {tree_paths.path_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(expected)}
  missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
  wrong = sorted(k for k in set(got) & set(want) if tuple(got[k]) != want[k])
  if missing or unexpected or wrong:
    detail = '; '.join(filter(None, [
      f'missing {missing[:5]}' if missing else '',
      f'unexpected {unexpected[:5]}' if unexpected else '',
      'shape mismatch ' + ', '.join(f'{k}: file {got[k]} vs model {want[k]}' for k in wrong[:5]) if wrong else '',
    ]))
    raise ValueError(f'{what} does not fit the configured encoder ({detail}). Set config.model.encoder to the '
                     "checkpoint's architecture (e.g. --config.model.encoder.variant=large/16).")


def _pretrain_config_for(eval_config) -> tuple[ml_collections.ConfigDict, str | None]:
  init = eval_config.get('init', None)
  if init and os.path.isdir(init):
    pre = read_pretrain_config(init)
  else:
    if init and not os.path.exists(init):
      raise FileNotFoundError(f'config.init={init!r} does not exist: pass a pre-training workdir or a converted '
                              f'checkpoint file ({", ".join(CHECKPOINT_SUFFIXES)}).')
    if not init and not eval_config.get('random_init', False):
      raise ValueError('config.init is not set: pass --config.init=<pre-training workdir or checkpoint file>, '
                       'or --config.random_init=True for the random-init baseline.')
    pre = config_lib.base_config()
    pre.data = ml_collections.ConfigDict()
    pre.model.encoder = ml_collections.ConfigDict()
  encoder = _encoder_overrides(eval_config)
  if init and os.path.isdir(init):
    encoder = {}  # the workdir's own architecture is authoritative
  if encoder:
    pre.model.encoder = ml_collections.ConfigDict(encoder)
  if not dict(pre.model.encoder):
    raise ValueError('no architecture: set config.init to a pre-training workdir or config.model.encoder '
                     "(e.g. --config.model.encoder.variant=base/16).")
  if not (init and os.path.isdir(init)):
    pre.method = _method_without_pretraining(pre.model.encoder)
  pre.data = merge_data_config(pre.data, eval_config.get('data', None))
  return pre, init


def _method_without_pretraining(encoder_cfg) -> str:
  """The method that holds an encoder with no pre-training run behind it (random init, a converted file): MAE
  where MAE can build it (the earlier baselines' random streams), else 'none' (ConvNets; iLLaMA's causal ViT)."""
  from mim_jax.models.encoders import build_encoder
  from mim_jax.models.vit import ViTEncoder

  encoder = build_encoder(encoder_cfg)
  if isinstance(encoder, ViTEncoder) and encoder.causal_mask == 'none' and encoder.class_token != 'none':
    return 'mae'
  return 'none'


def load(eval_config) -> Pretrained:
  """The encoder an evaluation starts from (see the module docstring)."""
  pre, init = _pretrain_config_for(eval_config)
  info = pipeline.dataset_info(pre.data)
  method = methods.build(pre, methods.Facts(info))
  random_init = bool(eval_config.get('random_init', False))
  if init and os.path.isdir(init) and not random_init:
    params, step = methods.eval_params_from_workdir(method, init, eval_config.get('init_step', None),
                                                    directory=workdir_lib.checkpoint_dir(pre, init))
    return Pretrained(pre, method, params, int(step), os.path.abspath(init), info)
  example = method.example_batch(2)
  seed = int(eval_config.get('seed', 0))
  if random_init:
    # A different stream from the pre-training init (seed + 1, as the end-of-pretraining baseline uses).
    params, _ = jax.jit(method.init)(jax.random.PRNGKey(seed + 1), example)
    return Pretrained(pre, method, jax.device_get(nn.meta.unbox(params)), None, 'random', info)
  loaded = load_checkpoint_file(init, method.encoder_module())
  expected = nn.meta.unbox(jax.eval_shape(method.init, jax.random.PRNGKey(0), example)[0])
  check_same_structure(loaded['encoder'], method.encoder_params(expected), f'the encoder in {init!r}')
  params = {'encoder': loaded['encoder']}
  if isinstance(expected, dict) and 'encoder_batch_stats' in expected:  # an encoder with BatchNorm (method 'none')
    check_same_structure(loaded.get('encoder_batch_stats', {}), expected['encoder_batch_stats'],
                         f'the BatchNorm statistics in {init!r}')
    params['encoder_batch_stats'] = loaded['encoder_batch_stats']
  return Pretrained(pre, method, params, None, os.path.abspath(init), info)
