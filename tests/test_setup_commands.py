"""The README's two set-up commands and what CI runs (issue 27, items 17-19): each starts by creating and activating
a virtual environment, so the pinned versions never replace a system Python's packages; `.ci/run` runs exactly
command (2); a bundled dataset's build says what happens in plain words (nothing is downloaded)."""

import re
import subprocess
import sys

from conftest import REPO


def _commands() -> list[str]:
  text = (REPO / 'README.md').read_text()
  block = text.split('## Set up and run', 1)[1].split('```bash', 1)[1].split('```', 1)[0]
  return [line for line in block.splitlines() if line.strip() and not line.startswith('#')]


def test_both_setup_commands_start_in_a_virtual_environment_and_ci_runs_the_second():
  commands = _commands()
  assert len(commands) == 2, commands
  for c in commands:
    assert c.startswith('python -m venv --system-site-packages .venv && . .venv/bin/activate && pip install'), c
    assert '-c constraints.txt' in c
  ci = (REPO / '.ci' / 'run').read_text().strip().splitlines()[-1]
  assert ci == commands[1]


def test_a_bundled_dataset_build_says_building_not_downloading(tmp_path):
  code = ('from mim_jax.data import sources; '
          f'sources.find_dataset_dir("mim_digits", {str(tmp_path)!r})')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=300,
                        env={'PYTHONPATH': str(REPO), 'PATH': '/usr/bin:/bin'})
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out[-2000:]
  assert 'building the bundled dataset mim_digits' in out and 'nothing is downloaded' in out
  assert not re.search(r'[Dd]ownload(ing|ed)', out.replace('nothing is downloaded', '')), out
  assert '\r' not in out  # no progress bar in a redirected log
