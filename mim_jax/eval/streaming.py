"""Sharded forward passes over whole splits, for evaluators: a method's frozen features, a classifier's logits.

Batches come from the grain pipeline (each host reads its share), become one global array split over the
('data', 'fsdp') mesh exactly like pre-training batches, and the jitted function's outputs come back
replicated, so every host ends with the full result in split order. Nothing holds the whole split's images in
memory, so the same code serves the digits and ImageNet.

The eval stream is the train pipeline (``mim_jax.data.pipeline.train_dataset``) on the requested split with
``augment='none'`` (the eval resize + center crop; a method's own eval record transform when it has one) and
``shuffle=False``: element ``i`` of the endless stream is example ``i mod n``, so ``ceil(n / batch)`` batches cover
the split once and a per-example ``valid`` flag marks the wrap-around padding of the last batch.

:class:`FrozenFeatures` is the one implementation of "a method's frozen feature of many images": the
linear-probe and k-NN tasks, the end-of-pre-training evaluation and the online monitors all use it, and it asks
the method (``method.feature``), never the encoder's token layout.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from mim_jax.data import pipeline
from mim_jax.train import sharding as shd


def device_count(mesh) -> int:
  return int(mesh.shape['data'] * mesh.shape['fsdp'])


def fit_batch(batch_size: int, num_examples: int, mesh) -> int:
  """``batch_size`` clipped to the split and rounded down to a multiple of the mesh's devices (at least one each)."""
  devices = device_count(mesh)
  step = devices * jax.process_count() // np.gcd(devices, jax.process_count())
  if num_examples < step:
    raise ValueError(f'the split has {num_examples} examples, fewer than the {step} devices/processes; '
                     'evaluate on a larger split or fewer devices (config.mesh).')
  return max(step, min(int(batch_size), num_examples) // step * step)


def eval_batches(data_cfg, split: str, global_batch: int, mesh, max_examples: int | None = None,
                 progress: bool = False, desc: str = '', *, fields=None, record_transform=None,
                 subset_seed: int = 0) -> Iterator[dict[str, jax.Array]]:
  """Global batches covering ``split`` once, or with ``max_examples`` a seeded stratified sample of it (never a
  prefix: mim_jax/data/subsets.py): every field of the eval records (``image`` and ``label`` by default; a
  method's eval fields with its ``fields`` / ``record_transform``) plus ``valid``."""
  subset = pipeline.eval_subset(data_cfg, split, max_examples, subset_seed)  # also checks that the split exists
  n = len(subset)
  global_batch = fit_batch(global_batch, n, mesh)
  cfg = ml_collections.ConfigDict(data_cfg.to_dict())
  cfg.train_split, cfg.augment, cfg.shuffle, cfg.return_index = split, 'none', False, False
  procs, me = jax.process_count(), jax.process_index()
  per_host = global_batch // procs

  def eval_transform(data_cfg, source, train):  # the eval form of the records, for the train pipeline's reader
    del train
    return record_transform(data_cfg, source, False) if record_transform is not None else None

  it = pipeline.train_iterator(cfg, per_host, seed=0, process_index=me, process_count=procs, fields=fields,
                               record_transform=eval_transform, indices=subset.indices)
  num_batches = -(-n // global_batch)
  local = np.arange(per_host)
  # a bar only where there is something to wait for, on a terminal (carriage returns would litter a log)
  show = progress and num_batches >= 20 and sys.stderr.isatty()
  for k in tqdm(range(num_batches), desc=desc or split, disable=not show, leave=False):
    batch = next(it)
    # Host `me` holds elements me, me + P, me + 2P, ... of the endless stream; element i is example i mod n.
    position = (k * per_host + local) * procs + me
    yield shd.global_batch({**batch, 'valid': position < n}, mesh)


def subset_summary(data_cfg, prefix: str, max_train: int | None, max_eval: int | None) -> dict:
  """How a probe's examples were drawn, for summary.json: ``<prefix>/{train,eval}_examples``, their sample kind
  ('all', 'stratified', 'uniform'; mim_jax/data/subsets.py) and ``<prefix>/subset_seed``."""
  out = {}
  for name, split, cap in (('train', data_cfg.train_split, max_train), ('eval', data_cfg.eval_split, max_eval)):
    subset = pipeline.eval_subset(data_cfg, split, cap)
    out.update({f'{prefix}/{name}_examples': len(subset), f'{prefix}/{name}_sample': subset.kind,
                f'{prefix}/subset_seed': subset.seed})
  return out


def array_batches(arrays: dict[str, np.ndarray], global_batch: int, mesh) -> Iterator[dict[str, jax.Array]]:
  """Global batches (plus ``valid``) over in-memory arrays that every process holds whole (small subsets: the
  online monitors'); the last batch is padded by wrapping around."""
  n = len(next(iter(arrays.values())))
  global_batch = fit_batch(global_batch, n, mesh)
  sharding = shd.batch_sharding(mesh)
  for start in range(0, n, global_batch):
    rows = np.arange(start, start + global_batch)
    batch = {k: np.asarray(v)[rows % n] for k, v in arrays.items()}
    batch['valid'] = rows < n
    yield {k: shd.place(v, sharding) for k, v in batch.items()}


def jit_forward(fn: Callable[[Any, dict], Any], params_shardings, mesh, rules):
  """``(params, batch) -> (fn(params, batch), batch['label'], batch['valid'])``, jitted with the batch split over
  the mesh and the outputs replicated (every host gets all rows)."""

  def with_labels(params, batch):
    return fn(params, batch), batch['label'], batch['valid']

  jitted = jax.jit(with_labels, in_shardings=(params_shardings, shd.batch_sharding(mesh)),
                   out_shardings=shd.replicated(mesh))

  def call(params, batch):
    with nn.logical_axis_rules(rules), jax.set_mesh(mesh):
      return jitted(params, batch)

  return call


def gather(forward, params, batches) -> tuple[np.ndarray, np.ndarray]:
  """``(outputs [N, ...], labels [N])`` of a :func:`jit_forward` function over the batches, padding dropped.

  Dispatch runs one batch ahead of the host copy.
  """
  outs, labels, pending = [], [], None

  def collect(item):
    out, label, valid = (np.asarray(a) for a in item)
    outs.append(out.astype(np.float32)[valid])
    labels.append(label[valid])

  for batch in batches:
    result = forward(params, batch)
    if pending is not None:
      collect(pending)
    pending = result
  if pending is None:
    raise ValueError('no batches to evaluate')
  collect(pending)
  return np.concatenate(outs), np.concatenate(labels)


def method_param_shardings(method, params, mesh, rules):
  """Shardings of ``params`` (a method's params, or the subset of its top-level entries a converted checkpoint
  holds) under the logical rules, as in pre-training."""
  boxed = jax.eval_shape(lambda rng, batch: method.eval_params(*method.init(rng, batch)), jax.random.PRNGKey(0),
                         method.example_batch(2))
  shardings = shd.logical_shardings(boxed, mesh, rules)
  if isinstance(params, dict) and isinstance(shardings, dict):
    shardings = {k: shardings[k] for k in params}
  return shardings


def place_params(method, params, mesh, rules):
  """``(params on the mesh, their shardings)``: host arrays are placed; arrays already on this mesh stay."""
  leaves = jax.tree.leaves(params)
  if leaves and all(isinstance(x, jax.Array) and isinstance(x.sharding, jax.sharding.NamedSharding)
                    and x.sharding.mesh == mesh for x in leaves):
    return params, jax.tree.map(lambda x: x.sharding, params)
  shardings = method_param_shardings(method, params, mesh, rules)
  return shd.place_tree(jax.device_get(params), shardings), shardings


class FrozenFeatures:
  """``method.feature(params, batch, feature)`` ('cls' or 'pooled', float32) over splits or in-memory subsets,
  sharded over ``mesh``, with labels."""

  def __init__(self, method, params, mesh, rules, feature: str):
    if feature not in ('cls', 'pooled'):
      raise ValueError(f"the probe feature must be 'cls' or 'pooled', got {feature!r}.")
    self.method, self.mesh, self.rules, self.feature = method, mesh, rules, feature
    self.params, shardings = place_params(method, params, mesh, rules)
    self._forward = jit_forward(lambda p, b: method.feature(p, b, feature), shardings, mesh, rules)

  def split(self, data_cfg, split: str, max_examples: int | None, batch_size: int,
            progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(features [N, D], labels [N])`` of the first ``max_examples`` of ``split`` (eval transform), streamed."""
    show = jax.process_index() == 0 if progress is None else progress
    batches = eval_batches(data_cfg, split, batch_size, self.mesh, max_examples, progress=show,
                           desc=f'{self.feature} features {split}', fields=self.method.batch_fields(False),
                           record_transform=self.method.record_transform)
    return gather(self._forward, self.params, batches)

  def arrays(self, arrays: dict[str, np.ndarray], batch_size: int = 256,
             params=None) -> tuple[np.ndarray, np.ndarray]:
    """The same over in-memory eval arrays (``pipeline.eval_arrays`` of the method's eval fields); ``params``
    replaces the ones given at construction (the live train state's, for monitors)."""
    params = self.params if params is None else params
    return gather(self._forward, params, array_batches(arrays, batch_size, self.mesh))
