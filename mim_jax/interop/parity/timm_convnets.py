"""Parity adapter for timm's ResNet and ConvNeXt (``timm/models/resnet.py``, ``timm/models/convnext.py``;
fixtures by tools/fixtures/timm_convnets.py).

Imports the stored state dict with :mod:`mim_jax.interop.timm_convnets`, runs the encoder the config describes on
``input/images`` (NCHW, transposed to NHWC) and compares, in eval mode, every stage's map (``stage{i}``, NCHW),
the pooled pre-logits feature and the logits (the imported head as a plain matmul). For ResNets, also one
train-mode forward (batch statistics, ``mutable=['batch_stats']``): the last stage, the logits and every updated
running mean / variance (timm names). Tolerance as for every method (``parity.activation``), except for the
train-mode maps and logits: ``1e-5 + 1e-3 * max|ref|`` (see ``TRAIN_MAPS``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.interop import parity, timm_convnets
from mim_jax.models.encoders import build_encoder


def run(fx: parity.Fixture) -> dict[str, np.ndarray]:
  """mim_jax's values for every output the fixture holds, under the fixture's names (NCHW maps)."""
  (images,) = fx.need('inputs', 'images')
  cfg = fx.config().model.encoder
  encoder = build_encoder(cfg)
  load = timm_convnets.resnet_from_timm if cfg.name == 'resnet' else timm_convnets.convnext_from_timm
  weights = load(fx.params)
  variables = jax.tree.map(jnp.asarray, weights.variables)
  x = jnp.asarray(images.transpose(0, 2, 3, 1))
  to_nchw = lambda a: np.asarray(a).transpose(0, 3, 1, 2)
  logits = lambda pooled: np.asarray(pooled) @ weights.head['kernel'] + weights.head['bias']
  with jax.default_matmul_precision('highest'):
    out = jax.jit(lambda v: encoder.apply(v, x))(variables)
    ours = {f'stage{i}': to_nchw(s) for i, s in enumerate(out['stages'])}
    ours['pooled'] = np.asarray(out['pooled'])
    ours['logits'] = logits(out['pooled'])
    if 'train/logits' in fx.outputs:
      train, updated = jax.jit(lambda v: encoder.apply(v, x, deterministic=False, mutable=['batch_stats']))(
          variables)
      ours['train/stage3'] = to_nchw(train['stages'][3])
      ours['train/logits'] = logits(train['pooled'])
      state = timm_convnets.resnet_to_timm(weights.params, jax.tree.map(np.asarray, updated['batch_stats']))
      ours.update({f'train/{k}': v for k, v in state.items() if k.endswith(('running_mean', 'running_var'))})
  return ours


def check(fx: parity.Fixture) -> list[parity.Check]:
  ours = run(fx)
  missing = sorted(set(fx.outputs) - set(ours))
  if missing:
    raise parity.FixtureError(f'{fx.path}: outputs mim_jax does not compute: {missing}')
  return [_train_check(k, ours[k], ref) if k in TRAIN_MAPS else parity.activation(k, ours[k], ref)
          for k, ref in sorted(fx.outputs.items())]


# Train-mode maps normalize by the statistics of a few values per channel (8 at the fixtures' last stage), which
# amplifies float32 rounding: on resnet50.npz timm's own float32 train/stage3 is 8.4e-4 (1.4e-4 of max|ref|) away
# from its float64 result, and mim_jax's 1.7e-3. In float64 both agree to 2.5e-12 (tests/fixtures/README.md).
TRAIN_MAPS = ('train/stage3', 'train/logits')


def _train_check(name: str, ours, ref) -> parity.Check:
  return parity.Check(name, parity.max_err(ours, ref), 1e-5 + 1e-3 * float(np.max(np.abs(ref))))
