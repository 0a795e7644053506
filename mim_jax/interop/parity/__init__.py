"""Parity with the official implementations: one fixture format, one command, one adapter per method.

``python -m mim_jax.interop.parity FILE.npz [FILE.npz ...]`` reads each fixture, rebuilds the method from the
config it records, loads the official parameters (under their official names), replays the official inputs and
random draws through mim_jax, and prints, per tensor, the max absolute error against its tolerance. It exits
non-zero when any tensor misses. The tests call :func:`check_file`.

A fixture (format ``mim_jax.parity/1``, docs/interop.md) is an ``.npz`` readable with ``allow_pickle=False``:

* ``format``: the string ``mim_jax.parity/1``;
* ``meta_json``: JSON with ``method`` (which adapter checks it), ``config`` (the mim_jax config, as a nested dict,
  that reproduces the official model's shapes), ``official`` (repository, commit, file hashes) and the recipe;
* ``param/<official name>``: every official parameter (torch layout);
* ``input/<name>``: the official inputs (images NCHW, ...);
* ``draw/<name>``: every random draw the official code made, injected in its place (noise, permutations, ...);
* ``output/<name>``: the official outputs, losses included;
* ``grad/<official name>``: d loss / d parameter for every trainable official parameter.

Files in the older official-MAE layout (``config_json`` plus ``imgs`` / ``noise`` / ``pred`` ...,
``shared/fixtures/official_mae/README.md``) are read too, as method ``mae``.

Tolerances (float32; why: docs/interop.md). Masks, ids and counts: exact. Losses: ``1e-5 * |ref|``.
Activations: ``1e-5 + 1e-4 * max|ref|``. Each gradient: ``1e-4 * max|ref|`` plus ``1e-6`` of the largest gradient
in the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from typing import Any

import numpy as np

FORMAT = 'mim_jax.parity/1'
# method -> the module that checks it (``check(fixture) -> list[Check]``).
ADAPTERS = {
    'mae': 'mim_jax.interop.parity.mae',
    'simmim': 'mim_jax.interop.parity.simmim',
    'hpm': 'mim_jax.interop.parity.hpm',
    'colormae_mask': 'mim_jax.interop.parity.colormae',
    'dmae': 'mim_jax.interop.parity.dmae',
    'maskalign': 'mim_jax.interop.parity.maskalign',
    'cae': 'mim_jax.interop.parity.cae',
    'cropmae': 'mim_jax.interop.parity.cropmae',
    'croco': 'mim_jax.interop.parity.croco',
    'illama': 'mim_jax.interop.parity.illama',
    'spark': 'mim_jax.interop.parity.spark',
    'videomae': 'mim_jax.interop.parity.videomae',
    'point_mae': 'mim_jax.interop.parity.point_mae',
    'multimae': 'mim_jax.interop.parity.multimae',
    'timm_resnet': 'mim_jax.interop.parity.timm_convnets',
    'timm_convnext': 'mim_jax.interop.parity.timm_convnets',
}
_LEGACY_MAE = ('imgs', 'noise', 'loss', 'pred', 'mask', 'ids_restore', 'latent', 'len_keep')


class FixtureError(ValueError):
  """A file that is not a readable parity fixture (the message names the file and what is wrong)."""


@dataclasses.dataclass
class Check:
  name: str
  max_abs: float
  tolerance: float

  @property
  def ok(self) -> bool:
    return bool(np.isfinite(self.max_abs)) and self.max_abs <= self.tolerance


@dataclasses.dataclass
class Fixture:
  path: str
  meta: dict[str, Any]
  params: dict[str, np.ndarray]
  inputs: dict[str, np.ndarray]
  draws: dict[str, np.ndarray]
  outputs: dict[str, np.ndarray]
  grads: dict[str, np.ndarray]

  @property
  def method(self) -> str:
    return self.meta['method']

  def config(self):
    import ml_collections

    return ml_collections.ConfigDict(self.meta['config'])

  def need(self, group: str, *names: str) -> list[np.ndarray]:
    """The named arrays of one group (``inputs``, ``draws``, ``outputs``); a missing one is a FixtureError."""
    table = getattr(self, group)
    missing = [n for n in names if n not in table]
    if missing:
      prefix = {'inputs': 'input', 'draws': 'draw', 'outputs': 'output'}[group]
      raise FixtureError(f'{self.path}: a {self.method!r} fixture needs {", ".join(f"{prefix}/{n}" for n in missing)}')
    return [table[n] for n in names]


def load(path: str) -> Fixture:
  """Reads a fixture in the ``mim_jax.parity/1`` format or the older official-MAE layout."""
  try:
    z = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise FixtureError(f'{path}: cannot read it as an .npz file ({e})') from None
  with z:
    files = set(z.files)
    groups = {g: {k[len(g) + 1:]: z[k] for k in files if k.startswith(g + '/')}
              for g in ('param', 'input', 'draw', 'output', 'grad')}
    if 'format' in files:
      fmt = str(z['format'])
      if fmt != FORMAT:
        raise FixtureError(f'{path}: format {fmt!r}; this mim_jax reads {FORMAT!r}')
      meta = json.loads(str(z['meta_json']))
      if meta.get('method') not in ADAPTERS:
        raise FixtureError(f'{path}: method {meta.get("method")!r} has no parity adapter; known: {sorted(ADAPTERS)}')
      return Fixture(path, meta, groups['param'], groups['input'], groups['draw'], groups['output'], groups['grad'])
    if 'config_json' in files and all(k in files for k in _LEGACY_MAE):
      return _legacy_mae(path, z, groups)
  raise FixtureError(f'{path}: neither a {FORMAT} fixture (no "format" key) nor an official-MAE fixture')


def _legacy_mae(path: str, z, groups) -> Fixture:
  official = json.loads(str(z['config_json']))
  meta = {'method': 'mae', 'config': mae_config(official), 'official': official, 'layout': 'official_mae (legacy)'}
  return Fixture(path, meta, groups['param'], {'images': z['imgs']}, {'noise': z['noise']},
                 {k: z[k] for k in ('loss', 'pred', 'mask', 'ids_restore', 'latent', 'len_keep')}, groups['grad'])


def mae_config(official: dict[str, Any]) -> dict[str, Any]:
  """The mim_jax MAE config (a nested dict) equal to an official ``MaskedAutoencoderViT``'s hyper-parameters."""
  if abs(official.get('layer_norm_eps', 1e-6) - 1e-6) > 1e-12:
    raise FixtureError('mim_jax follows the official builders: LayerNorm eps 1e-6; this file uses '
                       f'{official["layer_norm_eps"]}.')
  return {
      'method': 'mae',
      'norm_pix_loss': bool(official['norm_pix_loss']),
      'model': {
          'encoder': {'patch_size': int(official['patch_size']), 'width': int(official['embed_dim']),
                      'depth': int(official['depth']), 'num_heads': int(official['num_heads']),
                      'mlp_ratio': float(official['mlp_ratio'])},
          'decoder': {'width': int(official['decoder_embed_dim']), 'depth': int(official['decoder_depth']),
                      'num_heads': int(official['decoder_num_heads']), 'mlp_ratio': float(official['mlp_ratio'])},
      },
      'mask': {'name': 'random', 'ratio': float(official['mask_ratio'])},
  }


# -- comparisons (the tolerances of the module docstring) --


def max_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    return float('inf')
  return float(np.max(np.abs(a - b))) if a.size else 0.0


def exact(name: str, ours, ref) -> Check:
  return Check(name, max_err(ours, ref), 0.0)


def loss(name: str, ours, ref) -> Check:
  return Check(name, max_err(ours, ref), 1e-5 * float(np.max(np.abs(ref))))


def activation(name: str, ours, ref) -> Check:
  return Check(name, max_err(ours, ref), 1e-5 + 1e-4 * float(np.max(np.abs(ref))))


def gradients(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> list[Check]:
  """One check per official gradient; an official parameter that mim_jax gives no gradient is an error."""
  missing = sorted(set(ref) - set(ours))
  if missing:
    raise FixtureError(f'mim_jax produced no gradient for {missing}')
  # A floor of 1e-6 of the file's largest gradient: a parameter whose gradient is zero in exact arithmetic (a bias
  # that shifts every score of a ranking loss alike) gets float noise in both codes, with no relative scale.
  floor = 1e-6 * max((float(np.max(np.abs(r))) for r in ref.values() if r.size), default=0.0)
  return [Check(f'grad/{k}', max_err(ours[k], r), 1e-4 * float(np.max(np.abs(r))) + floor)
          for k, r in sorted(ref.items())]


def forward_and_grads(forward, params):
  """``forward(params)`` (a dict with ``loss``) and d loss / d params, in one jitted call with float32 matmuls at
  'highest' precision (what the official float32 CPU code computes; jitted because eager gradients of a whole
  model dispatch op by op, several times slower)."""
  import jax

  def loss_and_outputs(p):
    out = forward(p)
    return out['loss'], out

  with jax.default_matmul_precision('highest'):
    (_, out), grads = jax.jit(jax.value_and_grad(loss_and_outputs, has_aux=True))(params)
  return out, grads


def check_file(path: str) -> list[Check]:
  return check(load(path))


def check(fx: Fixture) -> list[Check]:
  adapter = importlib.import_module(ADAPTERS[fx.method])  # imported here: keeps `--help` free of jax
  return adapter.check(fx)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m mim_jax.interop.parity', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('files', nargs='+', help='fixture .npz files (docs/interop.md, "Parity fixtures")')
  parser.add_argument('--verbose', action='store_true', help='print every gradient, not only the worst')
  args = parser.parse_args(argv)
  failed = 0
  for path in args.files:
    try:
      fx = load(path)
      checks = check(fx)
    except (OSError, KeyError, ValueError) as e:  # FixtureError is a ValueError
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
    print(f'{path} [{fx.method}]: {"OK" if not bad else "FAILED: " + ", ".join(c.name for c in bad)}')
    for c in shown + [c for c in bad if c not in shown]:
      print(f'  {"ok  " if c.ok else "FAIL"} {c.name:<52} max|err| {c.max_abs:.3e}  tol {c.tolerance:.3e}')
    failed += bool(bad)
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
