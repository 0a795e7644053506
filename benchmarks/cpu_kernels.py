"""The pieces of a ViT train step, timed alone in JAX (XLA:CPU) and PyTorch: where the step's time goes and why.

    python benchmarks/cpu_kernels.py                    # the shapes of MAE ViT-Tiny/4@32 b128 and ViT-B/16@224 b8
    python benchmarks/cpu_kernels.py --only attention --threads 2

Each piece runs forward + backward (what a train step does) on random float32 data; the median of 7 rounds of
10 calls. JAX pieces are jitted; PyTorch runs eagerly with `torch.set_num_threads` = the same number of cores.

* `dense`: one weight matrix product [tokens, in] x [in, out] (qkv / fc1 / fc2 shapes), forward only: the bulk
  of the step's FLOPs;
* `bmm`: the batched products inside attention ([batch*heads, N, d] x [.., d, N] and back), forward only;
* `attention`: softmax attention on a fused qkv tensor, forward + backward: ours (`einsum`; `cpu_fused`, the
  C++ kernel of mim_jax.kernels.attention_cpu that the models use on one CPU device; `jax.nn.dot_product_attention`;
  and `deferred`: the softmax normalization applied to the output, as flash attention does) against torch's
  `scaled_dot_product_attention` (a fused flash kernel on CPU);
* `mlp`: a transformer MLP (fc1, exact GELU, fc2), forward + backward, with the dense layers applied to
  `[batch, tokens, features]` (`flat=False`) or to the tokens flattened to 2D as the models do
  (`mim_jax.models.vit.token_dense`): the second avoids a transposed copy before each weight gradient;
* `layernorm`: flax `LayerNorm` (two-pass variance, as the models use, and `use_fast_variance=True`) vs
  `torch.nn.LayerNorm`, forward + backward.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

# (label, shapes) for the two benchmark models. Tokens: batch x (visible + CLS) in the encoder, batch x all in the
# decoder.
DENSE = [('tiny dec fc1', 8320, 192, 768), ('tiny dec fc2', 8320, 768, 192), ('tiny enc qkv', 2176, 192, 576),
         ('B/16 enc fc1', 400, 768, 3072), ('B/16 dec fc1', 1576, 512, 2048)]
BMM = [('B/16 dec q.k', 128, 197, 32, 197), ('B/16 dec p.v', 128, 197, 197, 32), ('tiny dec q.k', 384, 65, 64, 65)]
ATTENTION = [('tiny enc', 128, 17, 3, 64), ('tiny dec', 128, 65, 3, 64), ('B/16 enc', 8, 50, 12, 64),
             ('B/16 dec', 8, 197, 16, 32)]
LAYERNORM = [('tiny dec', 8320, 192), ('B/16 dec', 1576, 512)]
MLP = [('tiny dec', 128, 65, 192), ('tiny enc', 128, 17, 192), ('B/16 dec', 8, 197, 512)]


def timed(fn, rounds: int = 7, calls: int = 10) -> float:
  fn()
  fn()
  times = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    for _ in range(calls):
      fn()
    times.append((time.perf_counter() - t0) / calls)
  return statistics.median(times)


def jax_pieces():
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  def ready(f):
    return lambda *a: jax.block_until_ready(f(*a))

  def dense(m, k, n):
    a, b = jnp.asarray(np.random.randn(m, k), jnp.float32), jnp.asarray(np.random.randn(k, n), jnp.float32)
    f = ready(jax.jit(jnp.dot))
    return lambda: f(a, b)

  def bmm(bh, m, k, n):
    a, b = jnp.asarray(np.random.randn(bh, m, k), jnp.float32), jnp.asarray(np.random.randn(bh, k, n), jnp.float32)
    f = ready(jax.jit(lambda a, b: jnp.einsum('bmk,bkn->bmn', a, b)))
    return lambda: f(a, b)

  def attention_core(b, n, h, d, impl):
    """Attention on a given fused qkv (no projections), so it compares with torch's SDPA piece."""
    qkv = jnp.asarray(np.random.randn(b, n, 3 * h * d), jnp.float32)
    r = jnp.asarray(np.random.randn(b, n, h * d), jnp.float32)

    def attend(qkv):
      q, k, v = (t.reshape(b, n, h, d) for t in jnp.split(qkv, 3, axis=-1))
      if impl == 'einsum':
        logits = jnp.einsum('bqhd,bkhd->bhqk', q * d ** -0.5, k, preferred_element_type=jnp.float32)
        out = jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(logits, axis=-1), v)
      elif impl == 'cpu_fused':  # mim_jax.kernels.attention_cpu, what attention_impl='auto' runs on one CPU
        from mim_jax.kernels import attention_cpu
        out = attention_cpu.packed_attention(qkv.reshape(b, n, 3, h, d))
      elif impl == 'deferred':  # flash attention's order: normalize the [N, d] output, not the [N, N] weights
        logits = jnp.einsum('bqhd,bkhd->bhqk', q * d ** -0.5, k, preferred_element_type=jnp.float32)
        p = jnp.exp(logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True)))
        out = jnp.einsum('bhqk,bkhd->bqhd', p, v) / jnp.transpose(p.sum(-1), (0, 2, 1))[..., None]
      else:
        out = jax.nn.dot_product_attention(q, k, v, implementation=impl)
      return jnp.sum(out.reshape(b, n, h * d) * r)

    f = ready(jax.jit(jax.grad(attend)))
    return lambda: f(qkv)

  def mlp(b, n, d, flat):
    from mim_jax.models.vit import gelu_exact
    x = jnp.asarray(np.random.randn(b, n, d), jnp.float32)
    r = jnp.asarray(np.random.randn(b, n, d), jnp.float32)
    w1 = jnp.asarray(np.random.randn(d, 4 * d) * d ** -0.5, jnp.float32)
    w2 = jnp.asarray(np.random.randn(4 * d, d) * (4 * d) ** -0.5, jnp.float32)

    def loss(w, x):
      h = x.reshape(-1, d) if flat else x
      y = gelu_exact(h @ w[0]) @ w[1]
      return jnp.sum(y.reshape(x.shape) * r)

    f = ready(jax.jit(jax.grad(loss, argnums=(0, 1))))
    return lambda: f((w1, w2), x)

  def layernorm(m, d, fast_variance=False):
    x = jnp.asarray(np.random.randn(m, d), jnp.float32)
    r = jnp.asarray(np.random.randn(m, d), jnp.float32)
    ln = nn.LayerNorm(epsilon=1e-6, use_fast_variance=fast_variance)
    params = ln.init(jax.random.PRNGKey(0), x)
    f = ready(jax.jit(jax.grad(lambda p, x: jnp.sum(ln.apply(p, x) * r), argnums=(0, 1))))
    return lambda: f(params, x)

  return dict(dense=dense, bmm=bmm, attention=attention_core, mlp=mlp, layernorm=layernorm)


def torch_pieces(threads: int):
  import torch
  torch.set_num_threads(threads)

  def dense(m, k, n):
    a, b = torch.randn(m, k), torch.randn(k, n)
    return lambda: a @ b

  def bmm(bh, m, k, n):
    a, b = torch.randn(bh, m, k), torch.randn(bh, k, n)
    return lambda: torch.bmm(a, b)

  def attention(b, n, h, d):
    qkv = torch.randn(b, n, 3 * h * d, requires_grad=True)
    r = torch.randn(b, n, h * d)

    def step():
      q, k, v = qkv.reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
      out = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, h * d)
      (out * r).sum().backward()
      qkv.grad = None

    return step

  def layernorm(m, d):
    x = torch.randn(m, d, requires_grad=True)
    r = torch.randn(m, d)
    ln = torch.nn.LayerNorm(d, eps=1e-6)

    def step():
      (ln(x) * r).sum().backward()
      x.grad = None
      ln.zero_grad(set_to_none=True)

    return step

  def mlp(b, n, d):
    x = torch.randn(b, n, d, requires_grad=True)
    r = torch.randn(b, n, d)
    fc1, fc2 = torch.nn.Linear(d, 4 * d, bias=False), torch.nn.Linear(4 * d, d, bias=False)

    def step():
      (fc2(torch.nn.functional.gelu(fc1(x))) * r).sum().backward()
      x.grad = None
      fc1.zero_grad(set_to_none=True)
      fc2.zero_grad(set_to_none=True)

    return step

  return dict(dense=dense, bmm=bmm, attention=attention, mlp=mlp, layernorm=layernorm)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--only', default='dense,bmm,attention,mlp,layernorm')
  p.add_argument('--threads', type=int, default=None, help='cores for both (default: all available)')
  args = p.parse_args(argv)
  cores = sorted(os.sched_getaffinity(0))
  if args.threads:
    os.sched_setaffinity(0, cores[:args.threads])
  threads = len(os.sched_getaffinity(0))
  only = set(args.only.split(','))
  jx = jax_pieces()
  try:
    th = torch_pieces(threads)
  except ImportError:
    th = None
    print('torch is not installed: JAX timings only (pip install torch)')
  print(f'{threads} threads; ms per call (median), forward + backward unless noted; speed = torch ms / jax ms\n')
  print(f"{'piece':28s} {'jax ms':>8} {'torch ms':>9} {'speed':>6}  note")

  def row(name, jax_ms, torch_ms, note=''):
    speed = f'{torch_ms / jax_ms:5.2f}x' if torch_ms else '-'
    print(f"{name:28s} {jax_ms:8.2f} {torch_ms or float('nan'):9.2f} {speed:>6}  {note}", flush=True)

  if 'dense' in only:
    for label, m, k, n in DENSE:
      j = timed(jx['dense'](m, k, n)) * 1e3
      t = timed(th['dense'](m, k, n)) * 1e3 if th else None
      row(f'dense {label}', j, t, f'forward only, [{m},{k}]x[{k},{n}], jax {2 * m * k * n / j / 1e6:.0f} GFLOP/s'
          + (f', torch {2 * m * k * n / t / 1e6:.0f}' if t else ''))
  if 'bmm' in only:
    for label, bh, m, k, n in BMM:
      j = timed(jx['bmm'](bh, m, k, n)) * 1e3
      t = timed(th['bmm'](bh, m, k, n)) * 1e3 if th else None
      row(f'bmm {label}', j, t, f'forward only, {bh} x [{m},{k}]x[{k},{n}], jax {2 * bh * m * k * n / j / 1e6:.0f} '
          'GFLOP/s' + (f', torch {2 * bh * m * k * n / t / 1e6:.0f}' if t else ''))
  if 'attention' in only:
    for label, b, n, h, d in ATTENTION:
      t = timed(th['attention'](b, n, h, d)) * 1e3 if th else None
      from mim_jax.kernels import attention_cpu
      fused = ('cpu_fused',) if attention_cpu.available() else ()
      for impl in ('einsum', *fused, 'xla', 'deferred'):
        j = timed(jx['attention'](b, n, h, d, impl)) * 1e3
        row(f'attention {label} ({impl})', j, t, f'B={b} N={n} heads={h} d={d}; torch: SDPA')
  if 'mlp' in only:
    for label, b, n, d in MLP:
      t = timed(th['mlp'](b, n, d)) * 1e3 if th else None
      for flat in (False, True):
        j = timed(jx['mlp'](b, n, d, flat)) * 1e3
        row(f'mlp {label}' + (' (2D tokens)' if flat else ' (3D)'), j, t,
            f'[{b},{n},{d}] -> {4 * d} -> {d}' + ('; as the models run it' if flat else ''))
  if 'layernorm' in only:
    for label, m, d in LAYERNORM:
      t = timed(th['layernorm'](m, d)) * 1e3 if th else None
      for fast in (False, True):
        j = timed(jx['layernorm'](m, d, fast)) * 1e3
        row(f'layernorm {label}' + (' (fast var)' if fast else ''), j, t,
            f'[{m},{d}]' + ('; one pass for E[x], E[x^2] (use_fast_variance=True)' if fast else ''))


if __name__ == '__main__':
  main()
