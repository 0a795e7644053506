"""docs/adding_a_method.md runs as written: its method file, its config and its test."""

from __future__ import annotations

import importlib.util
import re

from conftest import REPO

GUIDE = REPO / 'docs' / 'adding_a_method.md'


def _blocks() -> dict[str, str]:
  """{path named by the block's '# file:' line: code} of the guide's python blocks."""
  out = {}
  for code in re.findall(r'```python\n(.*?)```', GUIDE.read_text(), re.S):
    first = code.splitlines()[0]
    if first.startswith('# file: '):
      out[first[len('# file: '):].strip()] = code
  return out


def test_the_guide_has_a_method_a_config_and_a_test():
  assert set(_blocks()) == {'mim_jax/methods/crossview_mae.py', 'configs/crossview_mae/digits.py',
                            'tests/test_crossview_mae.py'}


def test_the_guides_method_trains_resumes_and_probes(tmp_path):
  blocks = _blocks()
  method_file = tmp_path / 'crossview_mae_from_the_guide.py'
  method_file.write_text(blocks['mim_jax/methods/crossview_mae.py'])
  spec = importlib.util.spec_from_file_location('crossview_mae_from_the_guide', method_file)
  spec.loader.exec_module(importlib.util.module_from_spec(spec))  # registers 'crossview_mae'
  config_ns: dict = {}
  exec(compile(blocks['configs/crossview_mae/digits.py'], 'guide config', 'exec'), config_ns)
  test_ns: dict = {}
  exec(compile(blocks['tests/test_crossview_mae.py'], 'guide test', 'exec'), test_ns)
  test_ns['test_crossview_mae_trains_resumes_and_probes'](tmp_path / 'run', config_ns['get_config'])
