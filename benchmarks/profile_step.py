"""Where the time of one mim_jax MAE train step goes: a jax.profiler trace of one step, per op, grouped.

    python benchmarks/profile_step.py                           # MAE ViT-Tiny/4@32, batch 128, on this machine
    python benchmarks/profile_step.py --model base16_224 --batch 8 --top 25 --trace-dir /tmp/trace

Builds the same jitted step as benchmarks/train_step.py, warms it up, traces one step, and joins the trace's op
events with the compiled HLO (by instruction name) to print, per group, the summed event time:

* matrix products of the dense layers (qkv, proj, fc1, fc2, embeddings, prediction head), forward and backward;
* attention (its batched matrix products, softmax, the layout copies around them);
* LayerNorm (statistics, normalization, their gradients); the rest of the MLP (GELU, bias gradients);
* the optimizer (AdamW, the non-finite guard, the grad norm); anything else by its op name.

Each op counts with its wall time (the longest of its events when XLA splits it over threads); the sum can
exceed the step's wall time a little when XLA runs two independent ops at once.
The trace directory can also be opened in TensorBoard / Perfetto for the timeline.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import train_step as bench  # noqa: E402

DENSE = re.compile(r'/(qkv|proj|fc1|fc2|patch_embed|decoder_embed|decoder_pred|pred)/dot_general$')


def group_of(op_name: str) -> str:
  """A readable group for an HLO op from its jax op_name metadata."""
  if DENSE.search(op_name):
    return 'dense matmuls (qkv, proj, fc1, fc2, embed, head)'
  if '/attn/' in op_name:
    return 'attention (batched matmuls, softmax, layout copies)'
  if re.search(r'norm\d?/|_norm/|/norm/', op_name):
    return 'LayerNorm'
  if '/mlp/' in op_name:
    return 'MLP elementwise (GELU, bias grads)'
  if 'optimization_barrier' in op_name or 'add_any' in op_name or re.search(r'blocks_(\d+|N)/add$', op_name):
    return 'residual stream'
  # cond/: the non-finite guard's branch that applies the update
  if re.search(r'adam|optax|select_n|global_norm|square|^cond/', op_name, re.I):
    return 'optimizer + guard + grad norm'
  return 'other: ' + op_name.rsplit('/', 1)[-1][:40]


def op_names_from_hlo(hlo_text: str) -> dict[str, str]:
  names = {}
  # Any instruction line: '[ROOT ]%name = <shape> <opcode>(...), ..., metadata={op_name="..."}'. The shape may
  # be a tuple with spaces, and opcodes may have dashes (custom-call: the fused kernels).
  for m in re.finditer(r'^\s*(?:ROOT )?%(\S+) = [^\n]*?op_name="([^"]*)"', hlo_text, re.M):
    names[m.group(1)] = m.group(2)
  return names


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model', default='tiny4_32', choices=sorted(bench.MODELS))
  p.add_argument('--batch', type=int, default=None, help='default: the model\'s benchmark batch')
  p.add_argument('--compute-dtype', default='float32', choices=('float32', 'bfloat16', 'float16'))
  p.add_argument('--attention', default='', choices=('', 'auto', 'einsum', 'cpu_fused', 'xla', 'cudnn'),
                 help="attention_impl (default: the library's default, 'auto')")
  p.add_argument('--remat', default='none')
  p.add_argument('--top', type=int, default=15, help='also list the N most expensive single ops')
  p.add_argument('--trace-dir', default=None, help='keep the trace here (default: a temporary directory)')
  args = p.parse_args(argv)

  from mim_jax import perf
  perf.tune_host_allocator()  # as the trainer does
  import jax
  from jax.profiler import ProfileData

  spec = bench.MODELS[args.model]
  batch = args.batch or spec['batch']
  step, compiled, info = bench.build_jax_step(spec, batch, args)
  for _ in range(3):
    step()
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix='mim_jax_trace_')
  untraced = bench.timed_steps(step, 0, 3)['s_per_step']  # median of 3
  jax.profiler.start_trace(trace_dir)
  step()
  jax.profiler.stop_trace()
  (path,) = glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True)[-1:]
  names = op_names_from_hlo(compiled.as_text())

  # An op split into parallel tasks leaves one event per worker thread: its wall time is the longest of them.
  op_ns: dict[str, int] = collections.defaultdict(int)
  for plane in ProfileData.from_file(path).planes:
    for line in plane.lines:
      for event in line.events:
        if event.name in names:
          op_ns[event.name] = max(op_ns[event.name], event.duration_ns)
  per_group: collections.Counter = collections.Counter()
  per_op: collections.Counter = collections.Counter()
  for name, ns in op_ns.items():
    op = re.sub(r'blocks_\d+', 'blocks_N', names[name].replace('jit(train_step)/', ''))
    per_group[group_of(op)] += ns
    per_op[(re.sub(r'[._]\d+$', '', name), op)] += ns
  total = sum(per_group.values())
  flops = info['flops_per_step']
  print(f"{spec['label']}, batch {batch}: {untraced:.3f} s/step untraced (median of 3), {flops / 1e9:.1f} GFLOP "
        f'(matrix products) -> {flops / untraced / 1e9:.0f} GFLOP/s; '
        f'{total / 1e9:.3f} s of op time in the traced step (sum over ops of each op\'s wall time)')
  print(f"trace: {trace_dir}\n\n{'ms':>8}  {'share':>6}  group")
  small = 0
  for group, ns in per_group.most_common():
    if ns < 0.005 * total:
      small += ns
      continue
    print(f'{ns / 1e6:8.1f}  {ns / total:6.1%}  {group}')
  print(f'{small / 1e6:8.1f}  {small / total:6.1%}  everything else (each < 0.5%)')
  if args.top:
    print(f"\n{'ms':>8}  kind / op (summed over blocks)")
    for (kind, op), ns in per_op.most_common(args.top):
      print(f'{ns / 1e6:8.1f}  {kind:22s} {op[:110]}')


if __name__ == '__main__':
  main()
