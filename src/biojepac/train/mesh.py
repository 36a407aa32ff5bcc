"""Data parallelism over every device JAX sees, with `jax.sharding` (no home-made collectives).

The training state is replicated on a 1-D mesh named "data"; each batch is split along its leading
(cell) axis. XLA then inserts the gradient all-reduce itself, so the same jitted step runs on one CPU,
four forced host devices, a GPU node or a TPU slice. Multi-host (`jax.distributed`) builds on this:
`make_mesh` already spans `jax.devices()`, which includes every host's devices once initialised.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh over `devices` (default: every device JAX sees)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicate(tree, mesh: Mesh):
    """Place every array leaf of `tree` on all devices of `mesh` (non-arrays pass through). Under
    `jax.distributed` every host must hold the same values (same seed or checkpoint)."""
    sharding = NamedSharding(mesh, PartitionSpec())
    if jax.process_count() > 1:  # device_put cannot reach other hosts' devices
        return jax.tree.map(lambda x: place(x, sharding) if eqx.is_array(x) else x, tree)
    return jax.tree.map(lambda x: jax.device_put(x, sharding) if isinstance(x, (jax.Array, np.ndarray)) else x, tree)


def place(x, sharding: NamedSharding) -> jax.Array:
    """A host-identical value laid out as `sharding` over possibly non-local devices."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):  # typed keys travel as their raw key data
        return jax.random.wrap_key_data(place(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
    host = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Split every array in `batch` along its leading axis across the mesh's devices.

    Under `jax.distributed` each host passes only its own rows; they become its slice of one global array.
    """
    n_devices = len(mesh.local_devices)
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    out = {}
    for name, x in batch.items():
        assert x.shape[0] % n_devices == 0, (
            f"batch field {name!r} has {x.shape[0]} rows, not divisible by {n_devices} devices; "
            "choose a batch size that is a multiple of the device count"
        )
        out[name] = jax.make_array_from_process_local_data(sharding, np.asarray(x))
    return out
