"""Paired A/B of mim_jax train-step variants in one process: does a setting make the step faster?

    python benchmarks/ab_step.py --model tiny4_32 base 'dots:remat=dots'
    python benchmarks/ab_step.py --model base16_224 --steps 10 base 'conc:xla.xla_cpu_enable_concurrency_optimized_scheduler=true'
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/ab_step.py 'one:devices=1' 'two:devices=2'

On a shared machine the speed of the cores drifts by 10-20% within minutes, which swamps most single changes
when each variant is timed in its own run (benchmarks/train_step.py). Here every variant is compiled in the same
process, and the timed steps take turns - A B, then B A, ... - so that a drift hits all of them alike. The
result per variant: the median s/step, and its step time divided by the first variant's step of the same round
(the median and the quartiles of that paired ratio: below 1 is faster).

A variant is ``NAME`` or ``NAME:key=value,key=value``:

* a config key of the benchmark model (``remat``, ``attention_impl``, ``compute_dtype``, ...);
* ``xla.<option>``: an XLA compiler option for the step (e.g. ``xla.xla_cpu_enable_concurrency_optimized_scheduler``);
* ``devices=N``: data-parallel over the first N devices (default: all of them; fake CPU devices need
  XLA_FLAGS, above).

The final loss of every variant is printed: variants that change only speed train identically.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import train_step as bench  # noqa: E402  (sibling module: the models and the step builder)


def parse_value(text: str):
  low = text.lower()
  if low in ('true', 'false'):
    return low == 'true'
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def parse_variant(text: str) -> dict:
  """``'name:key=v,xla.opt=v,devices=2'`` -> {'name', 'overrides', 'compiler_options', 'devices'}."""
  name, _, spec = text.partition(':')
  if not name:
    raise ValueError(f'variant {text!r} has no name (NAME or NAME:key=value,...).')
  variant = {'name': name, 'overrides': {}, 'compiler_options': {}, 'devices': None}
  for item in filter(None, spec.split(',')):
    key, eq, value = item.partition('=')
    if not eq or not key:
      raise ValueError(f'variant {text!r}: {item!r} is not key=value.')
    if key == 'devices':
      variant['devices'] = int(value)
    elif key.startswith('xla.'):
      variant['compiler_options'][key[4:]] = parse_value(value)
    else:
      variant['overrides'][key] = parse_value(value)
  return variant


def quartiles(values: list[float]) -> tuple[float, float, float]:
  if len(values) < 2:
    return values[0], values[0], values[0]
  q1, q2, q3 = statistics.quantiles(values, n=4, method='inclusive')
  return q1, q2, q3


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('variants', nargs='+', help="NAME or NAME:key=value,... (the first is the reference)")
  parser.add_argument('--model', default='tiny4_32', choices=sorted(bench.MODELS))
  parser.add_argument('--batch', type=int, default=None, help='default: the model\'s benchmark batch')
  parser.add_argument('--steps', type=int, default=12, help='timed rounds (each runs every variant once)')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--compute-dtype', default='float32', choices=['float32', 'bfloat16', 'float16'])
  parser.add_argument('--attention', default='einsum', choices=['einsum', 'xla', 'cudnn'])
  parser.add_argument('--remat', default='none')
  args = parser.parse_args(argv)
  variants = [parse_variant(v) for v in args.variants]
  names = [v['name'] for v in variants]
  if len(set(names)) != len(names):
    parser.error(f'variant names must differ, got {names}')

  for v in variants:  # a mistyped key fails now, not after the first variants have compiled
    try:
      bench.apply_overrides(bench.jax_config(bench.MODELS[args.model], args), v['overrides'])
    except ValueError as e:
      parser.error(f"variant {v['name']}: {e}")

  from mim_jax import perf
  perf.tune_host_allocator()  # as `python -m mim_jax.main` does, before JAX starts
  import jax

  spec = bench.MODELS[args.model]
  batch = args.batch or spec['batch']
  steps = []
  for v in variants:
    devices = None
    if v['devices'] is not None:
      if v['devices'] > jax.device_count():
        parser.error(f"variant {v['name']}: devices={v['devices']} but only {jax.device_count()} present "
                     '(on CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N)')
      devices = jax.devices()[:v['devices']]
    print(f"compiling {v['name']} ...", flush=True)
    step, _, info = bench.build_jax_step(spec, batch, args, overrides=v['overrides'], devices=devices,
                                         compiler_options=v['compiler_options'], count=False)
    for _ in range(args.warmup):
      step()
    steps.append((v['name'], step, info))

  times = {name: [] for name in names}
  for round_ in range(args.steps):
    order = steps if round_ % 2 == 0 else steps[::-1]
    for name, step, _ in order:
      t = time.perf_counter()
      step()
      times[name].append(time.perf_counter() - t)

  print(f"\n{spec['label']}, batch {batch}, {args.steps} alternating rounds")
  print(f"{'variant':24s} {'median s/step':>13s} {'min':>7s}   paired ratio vs {names[0]}: median [q1, q3]   final loss")
  ref = times[names[0]]
  for name, _, info in steps:
    ratios = [t / r for t, r in zip(times[name], ref)]
    q1, q2, q3 = quartiles(ratios)
    print(f'{name:24s} {statistics.median(times[name]):13.3f} {min(times[name]):7.3f}   '
          f'{q2:.3f} [{q1:.3f}, {q3:.3f}]{"":23s}{info["last_loss"]():.6f}')


if __name__ == '__main__':
  main()
