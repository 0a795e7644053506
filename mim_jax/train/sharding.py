"""Mesh, logical-axis rules and the shardings of the train state and batches.

The mesh has two axes, ('data', 'fsdp'). Batches are split over both. Parameters and optimizer state are
sharded along 'fsdp' by the logical rules (the model names its axes, the config maps names to mesh axes);
with fsdp=1 that is plain data parallelism, and the same config runs unchanged on 1 or N devices.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp')
BATCH_AXES = ('data', 'fsdp')

# Priority-ordered: the batch takes both mesh axes on activations, so 'embed' stays unsharded there;
# on parameters (which have no batch axis) 'embed' goes to 'fsdp'.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ('batch', BATCH_AXES),
    ('embed', 'fsdp'),
    ('length', None),
    ('mlp', None),
    ('heads', None),
    ('patch', None),
    ('pixels', None),
)


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp') mesh over ``devices`` (default: all). ``-1`` takes the remaining devices."""
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  if data == -1 and fsdp == -1:
    raise ValueError('only one of mesh.data / mesh.fsdp may be -1.')
  if data == -1:
    data = n // max(fsdp, 1)
  if fsdp == -1:
    fsdp = n // max(data, 1)
  if data * fsdp != n:
    raise ValueError(f'mesh data={data} x fsdp={fsdp} does not use the {n} available devices; '
                     'set config.mesh.data / config.mesh.fsdp so that their product is the device count '
                     '(or -1 for one of them).')
  arr = np.asarray(devices).reshape(data, fsdp)
  return Mesh(arr, MESH_AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def rules_from_config(rules) -> tuple[tuple[str, Any], ...]:
  if rules is None:
    return DEFAULT_RULES
  out = []
  for item in rules:
    name, axes = item
    out.append((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes))
  return tuple(out)


def logical_shardings(boxed_tree, mesh: Mesh, rules) -> Any:
  """NamedShardings for a pytree whose leaves may be flax ``LogicallyPartitioned`` boxes."""
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Per-host numpy batch -> one global ``jax.Array`` per key, split along the batch axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def check_batch_divisible(global_batch_size: int, mesh: Mesh) -> None:
  n = mesh.shape['data'] * mesh.shape['fsdp']
  if global_batch_size % n or global_batch_size % jax.process_count():
    raise ValueError(f'batch_size={global_batch_size} must be divisible by the {n} devices of the mesh and by '
                     f'the {jax.process_count()} processes; change config.batch_size.')
