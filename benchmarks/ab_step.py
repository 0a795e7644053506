"""Paired A/B of mim_jax train-step variants: does a setting, or a code change, make the step faster?

    python benchmarks/ab_step.py --model tiny4_32 base 'dots:remat=dots'
    python benchmarks/ab_step.py --model base16_224 --steps 10 base \
        'conc:xla.xla_cpu_enable_concurrency_optimized_scheduler=true'
    python benchmarks/ab_step.py before:rev=HEAD~1 after          # a code change: the last commit's library
    python benchmarks/ab_step.py --model base16_224 mae 'maskalign:method=maskalign,mask.ratio=0.7'   # a method
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
  XLA_FLAGS, above);
* ``rev=COMMIT``: the library (``mim_jax/``) as of that git commit, to measure a code change rather than a
  setting: ``python benchmarks/ab_step.py before:rev=HEAD~1 after``. When any variant names a ``rev``, every
  variant runs in its own worker process (``mim_jax/`` extracted with ``git archive`` into a temporary
  directory, or this checkout's for variants without one); the processes take turns exactly as above, only
  one of them runs a step at a time, and each times its own steps. The step is built by *this* checkout's
  benchmark code, so the commit needs the library functions that ``benchmarks/train_step.py`` calls.

The final loss of every variant is printed: variants that change only speed train identically.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
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
  variant = {'name': name, 'overrides': {}, 'compiler_options': {}, 'devices': None, 'rev': None}
  for item in filter(None, spec.split(',')):
    key, eq, value = item.partition('=')
    if not eq or not key:
      raise ValueError(f'variant {text!r}: {item!r} is not key=value.')
    if key == 'devices':
      variant['devices'] = int(value)
    elif key == 'rev':
      variant['rev'] = value
    elif key.startswith('xla.'):
      variant['compiler_options'][key[4:]] = parse_value(value)
    else:
      variant['overrides'][key] = parse_value(value)
  return variant


REPO = os.path.dirname(HERE)
PROTOCOL = 'AB '  # worker -> parent lines start with this; anything else a worker prints is passed through


def build_step(variant: dict, args) -> tuple:
  """(step, info) for one variant in this process, warmed up: ``step()`` runs one train step and waits."""
  import jax

  spec = bench.MODELS[args.model]
  devices = None
  if variant['devices'] is not None:
    if variant['devices'] > jax.device_count():
      raise ValueError(f"variant {variant['name']}: devices={variant['devices']} but only {jax.device_count()} "
                       'present (on CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N)')
    devices = jax.devices()[:variant['devices']]
  step, _, info = bench.build_jax_step(spec, args.batch or spec['batch'], args, overrides=variant['overrides'],
                                       devices=devices, compiler_options=variant['compiler_options'], count=False)
  for _ in range(args.warmup):
    step()
  return step, info


class InProcessVariant:
  def __init__(self, variant: dict, args):
    self.name = variant['name']
    self._step, self._info = build_step(variant, args)

  def step(self) -> float:
    t = time.perf_counter()
    self._step()
    return time.perf_counter() - t

  def final_loss(self) -> float:
    return self._info['last_loss']()

  def close(self):
    pass


def library_at(rev: str, into: str) -> str:
  """Extracts ``mim_jax/`` as of git commit ``rev`` into ``into``; returns ``into`` (a PYTHONPATH entry)."""
  archive = subprocess.run(['git', '-C', REPO, 'archive', '--format=tar', rev, 'mim_jax'], capture_output=True)
  if archive.returncode:
    raise ValueError(f'rev={rev}: git archive failed: {archive.stderr.decode().strip()}')
  subprocess.run(['tar', '-x', '-C', into], input=archive.stdout, check=True)
  return into


class WorkerVariant:
  """One variant in a child process (``--worker``) whose ``mim_jax`` comes from ``library_root``."""

  def __init__(self, variant: dict, args, library_root: str):
    self.name = variant['name']
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [library_root, os.environ.get('PYTHONPATH')]))}
    self._proc = subprocess.Popen([sys.executable, '-u', os.path.abspath(__file__), '--worker'], env=env, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    self._send({'variant': variant, 'args': vars(args)})
    self._reply('ready')

  def _send(self, message):
    self._proc.stdin.write(json.dumps(message) + '\n')
    self._proc.stdin.flush()

  def _reply(self, kind: str) -> str:
    for line in self._proc.stdout:
      if line.startswith(PROTOCOL):
        got, _, value = line[len(PROTOCOL):].strip().partition(' ')
        if got != kind:
          raise RuntimeError(f'variant {self.name}: worker sent {got!r}, expected {kind!r}')
        return value
      print(line, end='')
    raise RuntimeError(f'variant {self.name}: its worker process exited (code {self._proc.wait()}); '
                       'its error is printed above')

  def step(self) -> float:
    self._send('step')
    return float(self._reply('time'))

  def final_loss(self) -> float:
    self._send('loss')
    return float(self._reply('loss'))

  def close(self):
    if self._proc.poll() is None:
      self._send('quit')
      self._proc.wait(timeout=60)


def worker_main() -> None:
  """The ``--worker`` side of WorkerVariant: build one variant, then run steps on request."""
  setup = json.loads(sys.stdin.readline())
  from mim_jax import perf
  perf.tune_host_allocator()  # as `python -m mim_jax.main` does, before JAX starts
  import mim_jax
  print(f"variant {setup['variant']['name']}: mim_jax from {os.path.dirname(os.path.dirname(mim_jax.__file__))}",
        flush=True)
  variant = InProcessVariant(setup['variant'], argparse.Namespace(**setup['args']))
  print(PROTOCOL + 'ready', flush=True)
  for line in sys.stdin:
    command = json.loads(line)
    if command == 'step':
      print(f'{PROTOCOL}time {variant.step()!r}', flush=True)
    elif command == 'loss':
      print(f'{PROTOCOL}loss {variant.final_loss()!r}', flush=True)
    elif command == 'quit':
      return


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
  parser.add_argument('--attention', default='', choices=['', 'auto', 'einsum', 'cpu_fused', 'xla', 'cudnn'],
                      help="attention_impl (default: each variant's library default)")
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

  spec = bench.MODELS[args.model]
  batch = args.batch or spec['batch']
  runners = []
  scratch = tempfile.mkdtemp(prefix='mim_jax_ab_') if any(v['rev'] for v in variants) else None
  try:
    if scratch is None:
      from mim_jax import perf
      perf.tune_host_allocator()  # as `python -m mim_jax.main` does, before JAX starts
    for v in variants:
      print(f"compiling {v['name']} ...", flush=True)
      if scratch is None:
        runners.append(InProcessVariant(v, args))
      else:
        root = REPO
        if v['rev']:
          root = os.path.join(scratch, v['name'])
          os.makedirs(root)
          library_at(v['rev'], root)
        runners.append(WorkerVariant(v, args, root))

    times = {r.name: [] for r in runners}
    for round_ in range(args.steps):
      for runner in runners if round_ % 2 == 0 else runners[::-1]:
        times[runner.name].append(runner.step())

    print(f"\n{spec['label']}, batch {batch}, {args.steps} alternating rounds")
    print(f"{'variant':24s} {'median s/step':>13s} {'min':>7s}   "
          f"paired ratio vs {names[0]}: median [q1, q3]   final loss")
    ref = times[names[0]]
    for runner in runners:
      ratios = [t / r for t, r in zip(times[runner.name], ref)]
      q1, q2, q3 = quartiles(ratios)
      print(f'{runner.name:24s} {statistics.median(times[runner.name]):13.3f} {min(times[runner.name]):7.3f}   '
            f'{q2:.3f} [{q1:.3f}, {q3:.3f}]{"":23s}{runner.final_loss():.6f}')
  except ValueError as e:
    parser.error(str(e))
  finally:
    for runner in runners:
      runner.close()
    if scratch:
      shutil.rmtree(scratch, ignore_errors=True)


if __name__ == '__main__':
  if sys.argv[1:] == ['--worker']:
    worker_main()
  else:
    main()
