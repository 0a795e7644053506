"""Mesh, logical-axis rules and the shardings of the train state and batches.

The mesh has two axes, ('data', 'fsdp'). Batches are split over both. Parameters and optimizer state are
sharded along 'fsdp' by the logical rules (the model names its axes, the config maps names to mesh axes);
with fsdp=1 that is plain data parallelism, and the same config runs unchanged on 1 or N devices. With
fsdp=N every weight matrix and its two Adam moments live 1/N on each device; XLA all-gathers a layer's weights
just before use and reduce-scatters its gradients (ZeRO-3 / FSDP), because the activations are sharded only
along the batch.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
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


def mesh_shape(data: int, fsdp: int, num_devices: int) -> tuple[int, int]:
  """Resolves ``-1`` (the remaining devices) and checks that data x fsdp uses every device."""
  if data == -1 and fsdp == -1:
    raise ValueError('only one of mesh.data / mesh.fsdp may be -1.')
  if data == -1:
    data = num_devices // max(fsdp, 1)
  if fsdp == -1:
    fsdp = num_devices // max(data, 1)
  if data < 1 or fsdp < 1 or data * fsdp != num_devices:
    raise ValueError(f'mesh data={data} x fsdp={fsdp} does not use the {num_devices} available devices; '
                     'set config.mesh.data / config.mesh.fsdp so that their product is the device count '
                     '(or -1 for one of them).')
  return data, fsdp


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp') mesh over ``devices`` (default: all, over all processes). ``-1`` takes the remaining
  devices. 'fsdp' is the inner axis: its collectives (weight all-gathers every layer) take the fastest links,
  and on several hosts each host's devices hold a contiguous block of the batch."""
  devices = list(devices if devices is not None else jax.devices())
  data, fsdp = mesh_shape(data, fsdp, len(devices))
  return Mesh(_device_grid(devices, data, fsdp), MESH_AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def _device_grid(devices: list, data: int, fsdp: int) -> np.ndarray:
  if devices[0].platform != 'tpu':  # CPU / GPU: jax.devices() is already grouped by process
    return np.asarray(devices).reshape(data, fsdp)
  slices = sorted({getattr(d, 'slice_index', 0) for d in devices})
  if len(slices) > 1:  # multi-slice TPU: only 'data' crosses the slow data-center network
    if data % len(slices):
      raise ValueError(f'mesh.data={data} must be a multiple of the {len(slices)} TPU slices.')
    return mesh_utils.create_hybrid_device_mesh((data // len(slices), fsdp), (len(slices), 1), devices,
                                                allow_split_physical_axes=True)
  return mesh_utils.create_device_mesh((data, fsdp), devices, allow_split_physical_axes=True)


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


def check_divisible(abstract_tree, shardings) -> None:
  """Raises a ValueError listing the arrays whose sharded dimensions do not divide by their mesh axes
  (XLA would otherwise fail deep inside compilation)."""
  bad = []

  def visit(path, leaf, sharding):
    mesh = sharding.mesh
    for dim, axes in zip(leaf.shape, sharding.spec):
      if axes is None:
        continue
      size = int(np.prod([mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,))]))
      if dim % size:
        bad.append(f'{jax.tree_util.keystr(path)} {tuple(leaf.shape)} over {axes}={size}')

  jax.tree_util.tree_map_with_path(visit, abstract_tree, shardings)
  if bad:
    raise ValueError('these arrays cannot be split evenly over the mesh: ' + '; '.join(bad[:8]) +
                     ('...' if len(bad) > 8 else '') + '. Use a config.mesh.fsdp that divides the model width '
                     '(and the other named dimensions), or map that logical axis to None in config.mesh.rules.')


def shard_bytes(tree) -> int:
  """Bytes one device holds of a pytree of arrays / ShapeDtypeStructs that carry a ``.sharding``."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape)
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
  return total


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def place(value, sharding) -> jax.Array:
  """A host array (the same value on every process) laid out in ``sharding``, also one spanning several
  processes: each fills its own shards (``jax.device_put`` of a host array cannot place a multi-process array)."""
  value = np.asarray(value)
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def place_tree(tree, shardings):
  return jax.tree.map(place, tree, shardings)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Per-host numpy batch -> one global ``jax.Array`` per key, split along the batch axis. Host ``p``'s rows
  become rows ``[p * b, (p + 1) * b)`` of the global batch (its devices hold that block of the mesh)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def check_batch_divisible(global_batch_size: int, mesh: Mesh) -> None:
  n = mesh.shape['data'] * mesh.shape['fsdp']
  if global_batch_size % n or global_batch_size % jax.process_count():
    raise ValueError(f'batch_size={global_batch_size} must be divisible by the {n} devices of the mesh and by '
                     f'the {jax.process_count()} processes; change config.batch_size.')
