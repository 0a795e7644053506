"""The layering of the library (README, Architecture): a module imports only from its own layer or below, and
nothing lists the methods, encoders or mask generators by hand.

Imports inside functions count too: a lazy import is still an arrow up the stack.
"""

from __future__ import annotations

import ast
import pathlib

from conftest import REPO

# Lowest first. A module may import from its own area and from lower ranks; two areas of one rank never import
# each other (train and interop are independent of one another).
RANKS = {
    'utils': 0, 'kernels': 0, 'perf': 0,
    'data': 1,
    'targets': 2, 'losses': 2, 'masking': 2, 'report': 2,
    'models': 3,
    'config': 4,
    'workdir': 5, 'weights': 5,
    'methods': 6,
    'train': 7, 'interop': 7, 'recipes': 7,
    'eval': 8,
    'main': 9, 'convert': 9,
}


def _area(module: str) -> str:
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else 'mim_jax'


def _imports(path: pathlib.Path) -> set[str]:
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('mim_jax.'):
      out.add(node.module)
      if node.module.count('.') == 0:
        out.update(f'mim_jax.{a.name}' for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module == 'mim_jax':
      out.update(f'mim_jax.{a.name}' for a in node.names)
    elif isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.startswith('mim_jax.'))
  return out


def _modules():
  root = REPO / 'mim_jax'
  for path in sorted(root.rglob('*.py')):
    parts = path.relative_to(REPO).with_suffix('').parts
    yield '.'.join(p for p in parts if p != '__init__'), path


def test_every_area_has_a_rank():
  areas = {_area(m) for m, _ in _modules()} - {'mim_jax'}
  assert areas <= set(RANKS), f'give these modules a layer in RANKS (and the README): {sorted(areas - set(RANKS))}'


def test_no_module_imports_upwards():
  bad = []
  for module, path in _modules():
    a = _area(module)
    if a == 'mim_jax':  # the package's own __init__ (a lazy re-export of mim_jax.features)
      continue
    for imported in _imports(path):
      b = _area(imported)
      if b == a or b == 'mim_jax':
        continue
      if RANKS[b] > RANKS[a] or (RANKS[b] == RANKS[a] and b != a):
        bad.append(f'{module} imports {imported} ({a} is layer {RANKS[a]}, {b} is layer {RANKS[b]})')
  assert not bad, '\n'.join(bad)


def test_the_check_sees_an_upward_import(tmp_path):
  # The checker itself must be able to fail: a lazy import of train from methods is caught.
  source = tmp_path / 'm.py'
  source.write_text('def f():\n  from mim_jax.train import loop\n  import mim_jax.eval.knn\n')
  assert _imports(source) == {'mim_jax.train', 'mim_jax.eval.knn'}


def test_methods_and_encoders_are_not_listed_by_hand():
  init = (REPO / 'mim_jax' / 'methods' / '__init__.py').read_text()
  for name in ('mae', 'simmim', 'hpm'):
    assert f'import {name}' not in init and f'methods.{name}' not in init  # discovery finds them
