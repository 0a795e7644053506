"""Parity against the official MAE implementation's fixture files.

``python -m mim_jax.interop.parity FILE.npz [FILE.npz ...]`` rebuilds the model from each file's config,
loads its official-named weights, runs mim_jax on its images and noise, prints the max error of every
output and gradient, and exits non-zero when any is outside tolerance. The tests call :func:`check_file`.

Tolerances (float32, from the fixtures' README): loss rtol 1e-5; pred/latent atol 1e-5 + rtol 1e-4;
each gradient atol 1e-4 * max|grad|.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mim_jax.interop.official_mae import from_official, to_official


@dataclasses.dataclass
class Check:
  name: str
  max_abs: float
  tolerance: float

  @property
  def ok(self) -> bool:
    return bool(np.isfinite(self.max_abs)) and self.max_abs <= self.tolerance


def config_from_fixture(cfg: dict[str, Any]) -> ml_collections.ConfigDict:
  """The mim_jax MAE config equivalent to an official fixture's hyper-parameters."""
  if abs(cfg.get('layer_norm_eps', 1e-6) - 1e-6) > 1e-12:
    raise ValueError('mim_jax follows the official builders: LayerNorm eps 1e-6; this file uses '
                     f'{cfg["layer_norm_eps"]}.')
  return ml_collections.ConfigDict({
      'method': 'mae',
      'norm_pix_loss': bool(cfg['norm_pix_loss']),
      'model': {
          'encoder': {'patch_size': int(cfg['patch_size']), 'width': int(cfg['embed_dim']),
                      'depth': int(cfg['depth']), 'num_heads': int(cfg['num_heads']),
                      'mlp_ratio': float(cfg['mlp_ratio'])},
          'decoder': {'width': int(cfg['decoder_embed_dim']), 'depth': int(cfg['decoder_depth']),
                      'num_heads': int(cfg['decoder_num_heads']), 'mlp_ratio': float(cfg['mlp_ratio'])},
      },
      'mask': {'name': 'random', 'ratio': float(cfg['mask_ratio'])},
  })


def load_fixture(path: str) -> dict[str, Any]:
  z = np.load(path, allow_pickle=False)
  cfg = json.loads(str(z['config_json']))
  return {
      'config': cfg,
      'params': {k[len('param/'):]: z[k] for k in z.files if k.startswith('param/')},
      'grads': {k[len('grad/'):]: z[k] for k in z.files if k.startswith('grad/')},
      **{k: z[k] for k in ('imgs', 'noise', 'loss', 'pred', 'mask', 'ids_restore', 'latent', 'len_keep')},
  }


def check_file(path: str) -> list[Check]:
  from mim_jax.methods import Facts, build  # local import: keeps `--help` fast

  fx = load_fixture(path)
  cfg = config_from_fixture(fx['config'])
  images = jnp.asarray(fx['imgs'].transpose(0, 2, 3, 1))  # NCHW -> NHWC
  method = build(cfg, Facts.for_images(images.shape[1:]))
  params = jax.tree.map(jnp.asarray, from_official(fx['params']))
  info = method.masker.from_noise(jnp.asarray(fx['noise']))
  checks = [Check('len_keep', abs(info.len_keep - int(fx['len_keep'])), 0)]

  with jax.default_matmul_precision('highest'):
    out = method.forward(params, images, info)
    grads = jax.grad(lambda p: method.forward(p, images, info)['loss'])(params)

  def err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))

  def tol(ref, atol, rtol):
    return float(atol + rtol * np.max(np.abs(ref)))

  checks += [
      Check('mask', err(info.mask, fx['mask']), 0.0),
      Check('ids_restore', err(info.ids_restore, fx['ids_restore']), 0.0),
      Check('loss', err(out['loss'], fx['loss']), tol(fx['loss'], 0.0, 1e-5)),
      Check('latent', err(out['latent'], fx['latent']), tol(fx['latent'], 1e-5, 1e-4)),
      Check('pred', err(out['pred'], fx['pred']), tol(fx['pred'], 1e-5, 1e-4)),
  ]
  grads_official = to_official(jax.tree.map(np.asarray, grads), patch_size=int(fx['config']['patch_size']))
  missing = sorted(set(fx['grads']) - set(grads_official))
  if missing:
    raise ValueError(f'mim_jax produced no gradient for {missing}')
  for key, ref in sorted(fx['grads'].items()):
    checks.append(Check(f'grad/{key}', err(grads_official[key], ref), 1e-4 * float(np.max(np.abs(ref)))))
  return checks


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('files', nargs='+', help='fixture .npz files (see shared/fixtures/official_mae/README.md)')
  parser.add_argument('--verbose', action='store_true', help='print every gradient, not only the worst')
  args = parser.parse_args(argv)
  failed = 0
  for path in args.files:
    try:
      checks = check_file(path)
    except (OSError, KeyError, ValueError) as e:
      print(f'{path}: cannot check: {e}')
      failed += 1
      continue
    bad = [c for c in checks if not c.ok]
    grads = [c for c in checks if c.name.startswith('grad/')]
    shown = [c for c in checks if not c.name.startswith('grad/')]
    if grads and not args.verbose:
      worst = max(grads, key=lambda c: c.max_abs / max(c.tolerance, 1e-30))
      shown.append(dataclasses.replace(worst, name=f'{worst.name} (worst of {len(grads)} grads)'))
    else:
      shown += grads
    print(f'{path}: {"OK" if not bad else "FAILED"}')
    for c in shown + [c for c in bad if c not in shown]:
      print(f'  {"ok  " if c.ok else "FAIL"} {c.name:<48} max|err| {c.max_abs:.3e}  tol {c.tolerance:.3e}')
    failed += bool(bad)
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
