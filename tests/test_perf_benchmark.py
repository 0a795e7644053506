"""benchmarks/train_step.py runs end to end and writes the records the README's table comes from; its FLOP
counter counts what it should."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / 'benchmarks'))
from flops import count_flops  # noqa: E402


def test_flop_count_of_a_matmul_and_its_gradient():
  a, b = jnp.ones((32, 48)), jnp.ones((48, 16))
  assert count_flops(jnp.dot, a, b) == 2 * 32 * 48 * 16
  # forward + two backward products (d/da and d/db), through jit and grad
  loss = jax.jit(jax.grad(lambda a, b: jnp.sum(jnp.dot(a, b)), argnums=(0, 1)))
  assert count_flops(loss, a, b) == 3 * 2 * 32 * 48 * 16
  batched = count_flops(lambda q, k: jnp.einsum('bqd,bkd->bqk', q, k), jnp.ones((4, 10, 8)), jnp.ones((4, 12, 8)))
  assert batched == 2 * 4 * 10 * 12 * 8


def test_auto_batch_is_the_largest_that_fits():
  import train_step

  class Compiled:  # what footprint_bytes reads: 1 GB fixed + 100 MB per image, plus a 2 GB unmodelled bump;
    # a full compile (autotuned) needs 1 GB more than a quick one from 600 images on
    def __init__(self, b, quick):
      self.b, self.quick = b, quick

    def memory_analysis(self):
      need = 10**9 + 10**8 * self.b + (2 * 10**9 if self.b > 600 else 0)
      need += 10**9 if self.b >= 600 and not self.quick else 0
      return type('Mem', (), dict(argument_size_in_bytes=need, output_size_in_bytes=0, temp_size_in_bytes=0,
                                  alias_size_in_bytes=0))()

  compiled = []

  def compile_for(b, quick=False):
    compiled.append((b, quick))
    return Compiled(b, quick)

  batch, info = train_step.largest_batch(compile_for, 0.9, 1, limit=80 * 10**9)
  # 72 GB budget: the quick probes (64, 128) fit a line that says 710 -> 704 (a multiple of 32); 704 needs
  # 73.4 GB with the bump, so the quick search steps down by 10% to 608 (63.8 GB quick). The full compile of 608
  # needs 64.8 GB: it fits too, so 608 it is, each batch compiled once per kind.
  assert batch == 608
  assert compiled == [(64, True), (128, True), (704, True), (608, True), (608, False)]
  assert [(b, kind) for b, _, kind in info['tried']] == [(704, 'quick'), (608, 'quick'), (608, 'full')]

  # A full compile that needs more than the quick one said steps down again, with full compiles.
  compiled.clear()
  batch, info = train_step.largest_batch(compile_for, 0.9, 1, limit=int(71.5 * 10**9))
  # 64.35 GB budget: line -> 633 -> 608; quick 608 needs 63.8 GB (fits), full 64.8 GB does not -> full 544.
  assert batch == 544
  assert compiled[-3:] == [(608, True), (608, False), (544, False)]


@pytest.mark.slow  # times real train steps of two models (~1 min on 2 cores)
def test_benchmark_writes_one_record_per_model(tmp_path):
  has_torch = importlib.util.find_spec('transformers') is not None and importlib.util.find_spec('torch') is not None
  frameworks = 'jax,torch' if has_torch else 'jax'
  out = tmp_path / 'bench.json'
  proc = subprocess.run([sys.executable, 'benchmarks/train_step.py', '--models', 'tiny4_32', '--batch', '8',
                         '--steps', '1', '--warmup', '1', '--frameworks', frameworks, '--matmul-size', '256',
                         '--json', str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert 'MAE ViT-Tiny/4@32' in proc.stdout  # the table
  (record,) = json.loads(out.read_text())
  assert record['model'] == 'tiny4_32' and record['batch'] == 8
  assert record['mim_jax_img_s'] > 0 and record['jax_final_loss'] > 0
  # ViT-Tiny/4 MAE, batch 8: 16 visible + CLS tokens in a 12 x 192 encoder, 65 in a 4 x 192 decoder; about 10 GFLOP
  assert 5e9 < record['flops_per_step'] < 20e9, record['flops_per_step']
  if has_torch:
    assert record['baseline_img_s'] > 0
    assert record['ratio'] == record['mim_jax_img_s'] / record['baseline_img_s']


def test_ab_variants_parse():
  import ab_step

  assert ab_step.parse_variant('base') == {'name': 'base', 'overrides': {}, 'compiler_options': {}, 'devices': None,
                                           'rev': None}
  assert ab_step.parse_variant('old:rev=HEAD~1')['rev'] == 'HEAD~1'
  v = ab_step.parse_variant('x:remat=dots,xla.xla_cpu_enable_fast_math=true,devices=2,mask.ratio=0.5')
  assert v['overrides'] == {'remat': 'dots', 'mask.ratio': 0.5}
  assert v['compiler_options'] == {'xla_cpu_enable_fast_math': True} and v['devices'] == 2
  for bad in (':remat=dots', 'x:remat', 'x:=3'):
    try:
      ab_step.parse_variant(bad)
    except ValueError as e:
      assert bad in str(e)
    else:
      raise AssertionError(f'{bad!r} was accepted')


@pytest.mark.slow  # interleaved timed steps of two variants (~1.5 min on 2 cores)
def test_ab_step_runs_and_pairs_identical_variants():
  """Two variants that differ only in an XLA option train identically (same loss) and both get timed."""
  proc = subprocess.run([sys.executable, 'benchmarks/ab_step.py', '--model', 'tiny4_32', '--batch', '4',
                         '--steps', '2', '--warmup', '1', 'base',
                         'conc:xla.xla_cpu_enable_concurrency_optimized_scheduler=true'],
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  rows = [line.split() for line in proc.stdout.splitlines() if line.startswith(('base ', 'conc '))]
  assert [r[0] for r in rows] == ['base', 'conc'], proc.stdout
  assert rows[0][3] == '1.000'  # the reference against itself
  assert rows[0][-1] == rows[1][-1]  # same final loss
  assert all(float(r[1]) > 0 for r in rows)


@pytest.mark.slow  # checks out a git revision and times both (~1.5 min on 2 cores)
def test_ab_step_times_a_git_revision_of_the_library_next_to_this_checkout():
  """rev=COMMIT: that commit's mim_jax runs in its own worker process, taking turns with this checkout's."""
  proc = subprocess.run([sys.executable, 'benchmarks/ab_step.py', '--model', 'tiny4_32', '--batch', '4',
                         '--steps', '2', '--warmup', '1', 'committed:rev=HEAD', 'checkout'],
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  sources = dict(line.split(': mim_jax from ') for line in proc.stdout.splitlines() if ': mim_jax from ' in line)
  assert sources['variant committed'].startswith(tempfile.gettempdir()), sources  # extracted with git archive
  assert os.path.samefile(sources['variant checkout'], REPO), sources
  rows = [line.split() for line in proc.stdout.splitlines() if line.startswith(('committed ', 'checkout '))]
  assert [r[0] for r in rows] == ['committed', 'checkout'], proc.stdout
  assert all(float(r[1]) > 0 and np.isfinite(float(r[-1])) for r in rows)

  bad = subprocess.run([sys.executable, 'benchmarks/ab_step.py', '--steps', '1', 'a:rev=no-such-commit', 'b'],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2 and 'rev=no-such-commit: git archive failed' in bad.stderr, bad.stderr[-2000:]


def test_profile_reads_every_instruction_kind():
  """profile_step joins trace events to HLO instructions by name: custom calls (the fused kernels; tuple results
  with spaces, an opcode with a dash) and ROOT lines must be found, or their time silently drops out."""
  import profile_step

  hlo = '\n'.join([
      '  %fusion.3 = f32[8,16]{1,0} fusion(%p), kind=kLoop, calls=%c, '
      'metadata={op_name="jit(train_step)/jvp(MAEModel)/encoder/blocks_0/mlp/fc1/dot_general"}',
      '  %ffi_call.7 = (f32[2,17,3,64]{3,2,1,0}, f32[2,3,17,32]{3,2,1,0}) custom-call(%q), '
      'custom_call_target="x", metadata={op_name="jit(train_step)/jvp(MAEModel)/encoder/blocks_0/attn/ffi_call"}',
      '  ROOT %add.2 = f32[8]{0} add(%a, %b), metadata={op_name="jit(train_step)/cond/branch_1_fun/add"}',
      '  %param.1 = f32[8]{0} parameter(0)',
  ])
  names = profile_step.op_names_from_hlo(hlo)
  assert set(names) == {'fusion.3', 'ffi_call.7', 'add.2'}
  assert profile_step.group_of(names['ffi_call.7'].replace('jit(train_step)/', '')).startswith('attention')
  assert profile_step.group_of(names['fusion.3']).startswith('dense matmuls')
  assert profile_step.group_of('cond/branch_1_fun/add').startswith('optimizer')
  assert profile_step.group_of('jvp(MAEModel)/decoder/decoder_blocks_N/add') == 'residual stream'
