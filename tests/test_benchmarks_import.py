"""The benchmark scripts run as ``python benchmarks/NAME.py``, which puts ``benchmarks/`` first on ``sys.path``: a
script named like an installed package or a standard module would shadow it for everything the benchmark
imports (issue 27, item 16: ``benchmarks/kernels.py`` hid Hugging Face's ``kernels`` package, which transformers
imports, so every PyTorch baseline failed)."""

import importlib.metadata
import subprocess
import sys

from conftest import REPO

# Top-level modules that today's PyTorch stack imports without being installed here (transformers -> kernels).
KNOWN_THIRD_PARTY = {'kernels', 'torch', 'torchvision', 'transformers', 'timm', 'accelerate', 'safetensors',
                     'huggingface_hub', 'tokenizers', 'triton', 'einops'}


def test_no_benchmark_script_shadows_a_package():
  installed = set(importlib.metadata.packages_distributions())
  taken = installed | set(sys.stdlib_module_names) | KNOWN_THIRD_PARTY
  scripts = {p.stem for p in (REPO / 'benchmarks').glob('*.py')}
  assert not scripts & taken, f'rename these benchmark scripts: {sorted(scripts & taken)}'


def test_a_benchmark_imports_its_libraries_from_its_own_path():
  # Run the way the README runs them: benchmarks/ first on sys.path; the packages the baselines need must resolve
  # outside benchmarks/.
  code = ('import sys, importlib.util; sys.path.insert(0, "benchmarks"); '
          'bad = [n for n in ("kernels", "jax", "numpy", "mim_jax") '
          'if (s := importlib.util.find_spec(n)) and s.origin and "/benchmarks/" in s.origin]; print(bad)')
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, check=True)
  assert out.stdout.strip() == '[]', out.stdout
