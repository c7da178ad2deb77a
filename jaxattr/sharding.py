"""The device mesh and the placement of batches and state on it.

One 1-D data-parallel mesh ('data') over every device of every process: a batch
is split along its first axis, the state is replicated, and the compiled steps
read as single-device code (the compiler inserts the collectives).
"""

import jax
import numpy as np


def create_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh(
    (len(devices),), ('data',), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
  )


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """The same array on every device of `mesh` (the state)."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def batch_sharded(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Split along the first axis over `mesh` (a batch)."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))


def check_divides(mesh: jax.sharding.Mesh, **batch_sizes: int) -> None:
  """Raises unless every global batch size divides over the devices of `mesh`."""
  bad = {name: size for name, size in batch_sizes.items() if size % mesh.size}
  if bad:
    sizes = ', '.join(f'{name} ({size})' for name, size in bad.items())
    raise ValueError(f'{sizes} must divide over {mesh.size} devices.')


def to_global(
  batch: dict[str, np.ndarray], sharding: jax.sharding.Sharding
) -> dict[str, jax.Array]:
  """This process's rows of a global batch -> global arrays split along `sharding`."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
