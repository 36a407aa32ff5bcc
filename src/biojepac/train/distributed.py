"""Many devices and many hosts with JAX's own runtime: `jax.distributed`, a mesh, sharded arrays.

What this adds to `train.mesh` (one host, data parallel):
- `init_distributed()`: joins the processes of a multi-host job from environment variables (or lets JAX
  auto-detect a TPU pod slice / SLURM); a plain single-process run is untouched.
- `make_mesh(model=m)`: a 2-D `("data", "model")` mesh over every device of every host. Batches split
  along "data"; `shard_params` splits the gene-embedding table's rows along "model" where that helps
  (tens of thousands of genes x d). XLA inserts the collectives; nothing here sends bytes itself.
- `global_batch()`: each host passes only the rows it streamed (`CellStream(process_index=...)`) and gets
  one global `jax.Array`, so every host runs the same jitted step on the same logical batch.
- `mixed_precision()`: bf16 compute with float32 master weights, gradients and optimiser state.
"""

import dataclasses
import os
from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from biojepac.train.mesh import DATA_AXIS, place as _place, replicate  # noqa: F401 (replicate: re-exported)

MODEL_AXIS = "model"


@dataclasses.dataclass(frozen=True)
class DistConfig:
    coordinator_address: str = ""
    """`host:port` of process 0 (env `BIOJEPAC_COORDINATOR`); empty and no env: single process, or JAX's auto-detection on TPU pods."""
    num_processes: int = 0
    """Processes in the job (env `BIOJEPAC_NUM_PROCESSES`); 0: from env or auto-detected."""
    process_id: int = -1
    """This process's rank (env `BIOJEPAC_PROCESS_ID`); -1: from env or auto-detected."""
    auto_detect: bool = False
    """Call `jax.distributed.initialize()` with no arguments (TPU pod slices, SLURM): JAX finds its peers."""


def init_distributed(cfg: DistConfig = DistConfig()) -> tuple[int, int]:
    """Join the job once; return `(process_index, process_count)`. A no-op for a single process."""
    addr = cfg.coordinator_address or os.environ.get("BIOJEPAC_COORDINATOR", "")
    n = cfg.num_processes or int(os.environ.get("BIOJEPAC_NUM_PROCESSES", "0"))
    pid = cfg.process_id if cfg.process_id >= 0 else int(os.environ.get("BIOJEPAC_PROCESS_ID", "-1"))
    if jax.distributed.is_initialized():
        pass
    elif cfg.auto_detect:
        jax.distributed.initialize()
    elif addr and n > 1:
        assert 0 <= pid < n, f"process_id={pid} must be in [0, {n}) (set BIOJEPAC_PROCESS_ID)"
        jax.distributed.initialize(coordinator_address=addr, num_processes=n, process_id=pid)
    return jax.process_index(), jax.process_count()


def make_mesh(model: int = 1, devices: list | None = None) -> Mesh:
    """A `(data, model)` mesh over all devices of all hosts; `model` devices share each table shard."""
    devices = jax.devices() if devices is None else devices
    assert len(devices) % model == 0, f"{len(devices)} devices cannot form a model axis of {model}"
    # Row-major reshape keeps each host's devices contiguous along "data", so a host's rows stay local.
    return Mesh(np.asarray(devices).reshape(len(devices) // model, model), (DATA_AXIS, MODEL_AXIS))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble the global batch from each host's own rows (host i's rows come i-th along "data")."""
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def is_gene_table(min_rows: int) -> Callable[[jax.Array], bool]:
    """Selects 2-D float leaves with at least `min_rows` rows: the per-gene embedding tables."""
    return lambda x: eqx.is_inexact_array(x) and x.ndim == 2 and x.shape[0] >= min_rows


def shard_params(params, mesh: Mesh, select: Callable[[jax.Array], bool]):
    """Rows of the selected leaves split along "model" (when divisible); everything else replicated."""
    n_model = mesh.shape[MODEL_AXIS]

    def place(x):
        if not eqx.is_array(x):
            return x
        rows_split = select(x) and n_model > 1 and x.shape[0] % n_model == 0
        return _place(x, NamedSharding(mesh, P(MODEL_AXIS) if rows_split else P()))

    return jax.tree.map(place, params)


def cast_floating(tree, dtype):
    """Every floating array leaf cast to `dtype`; integer and boolean leaves untouched."""
    return jax.tree.map(lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, tree)


def mixed_precision(loss_fn: Callable, compute_dtype=jnp.bfloat16) -> Callable:
    """Wrap `loss_fn(params, extra, batch, key)` to compute in `compute_dtype` from float32 master params.

    The cast sits inside the differentiated function, so gradients arrive in float32 (the master
    weights' dtype) and the optimiser never sees bf16. The loss and metrics return as float32.
    bf16 has float32's exponent range, so no loss scaling is needed (unlike fp16).
    """

    def wrapped(params, extra, batch, key):
        batch = {k: v.astype(compute_dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v for k, v in batch.items()}
        loss, metrics = loss_fn(cast_floating(params, compute_dtype), cast_floating(extra, compute_dtype), batch, key)
        return loss.astype(jnp.float32), jax.tree.map(lambda m: m.astype(jnp.float32), metrics)

    return wrapped
