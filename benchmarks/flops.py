"""Model FLOPs of a JAX function, counted from its jaxpr: 2*M*N*K for every matrix product.

Counting the program JAX traces (forward, backward and optimizer) rather than a formula keeps the number honest for
any method or model shape. Only matrix products are counted (elementwise work is a few percent and is not what a
"FLOP utilization" compares against a matmul peak). Attention that lowers to a fused kernel (cuDNN) is invisible
in the jaxpr, so callers count FLOPs on the same model with the XLA attention path; rematerialization should be off
when counting, so that the number is the model's FLOPs and not the recomputation's (the usual MFU definition).
"""

from __future__ import annotations

import math
from typing import Any

import jax
from jax.extend import core as jex_core


def _dot_general_flops(eqn) -> int:
  lhs, _ = (v.aval for v in eqn.invars)
  (lhs_contract, _), _ = eqn.params['dimension_numbers']
  out = eqn.outvars[0].aval
  k = math.prod(lhs.shape[d] for d in lhs_contract)
  return 2 * math.prod(out.shape) * k


def _sub_jaxprs(value: Any):
  if isinstance(value, jex_core.ClosedJaxpr):
    yield value.jaxpr
  elif isinstance(value, jex_core.Jaxpr):
    yield value
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _sub_jaxprs(v)


def jaxpr_flops(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      total += _dot_general_flops(eqn)
      continue
    if name == 'while':
      raise ValueError('cannot count FLOPs through a while loop (unknown trip count).')
    subs = [j for v in eqn.params.values() for j in _sub_jaxprs(v)]
    if name == 'cond':  # one branch runs: count the most expensive
      total += max((jaxpr_flops(j) for j in subs), default=0)
      continue
    inner = sum(jaxpr_flops(j) for j in subs)
    total += inner * (eqn.params['length'] if name == 'scan' else 1)
  return total


def count_flops(fn, *args, **kwargs) -> int:
  """Matrix-product FLOPs of one call of ``fn(*args, **kwargs)`` (abstract: nothing is computed)."""
  return jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)
