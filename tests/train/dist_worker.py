"""Subprocess body for tests/train/test_distributed.py (JAX's device count is fixed per process).

    python dist_worker.py host SHARD      # one of N hosts; env BIOJEPAC_COORDINATOR/NUM_PROCESSES/PROCESS_ID
    python dist_worker.py single SHARD N  # one process emulating N hosts' streams: the reference
    python dist_worker.py sharded SHARD   # 4 forced devices: (data, model) mesh, bf16, accumulation
Prints one JSON line.
"""

import json
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from biojepac.data.stream import CellStream, StreamConfig
from biojepac.train import distributed as dist
from biojepac.train import loop
from biojepac.train.loop import make_state, make_train_step

N_GENES, DIM, BATCH = 30, 8, 8


class TinyGeneModel(eqx.Module):
    """Expression-weighted sum of gene embeddings -> log library size: gathers from the gene table."""

    emb: jax.Array
    w: jax.Array

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.emb = jax.random.normal(k1, (N_GENES, DIM)) * 0.3
        self.w = jax.random.normal(k2, (DIM,)) * 0.3


def loss_fn(model, extra, batch, key):
    h = (batch["values"][..., None] * batch["mask"][..., None] * model.emb[batch["genes"]]).sum(1)
    pred = jnp.tanh(h) @ model.w
    loss = jnp.mean((pred - jnp.log1p(batch["library_size"])) ** 2)
    return loss, {"pred_mean": pred.mean()}


def batches(shard: str, host: int, n_hosts: int, n: int) -> list[dict]:
    cfg = StreamConfig(shard_fpaths=(shard,), batch_size=BATCH, top_k=6, block_rows=20, window_blocks=2, seed=3)
    s = CellStream(cfg, process_index=host, process_count=n_hosts)
    return [{k: v for k, v in s.next_batch().items() if k != "row"} for _ in range(n)]


def run(state, step, stream_batches, to_global):
    losses = []
    for b in stream_batches:
        state, metrics = step(state, to_global(b))
        losses.append(float(metrics["loss"].addressable_data(0)))
    emb = np.asarray(jax.device_get(state.params.emb.addressable_data(0)))
    return state, losses, emb


def main() -> None:
    mode, shard = sys.argv[1], sys.argv[2]
    if mode == "host":  # before anything touches a device
        host, n_hosts = dist.init_distributed()
    optim = optax.sgd(0.1)
    state = make_state(TinyGeneModel(jax.random.key(0)), optim, jax.random.key(1))
    plain = make_train_step(loss_fn, optim)
    if mode == "host":
        mesh = dist.make_mesh()
        state = dist.replicate(state, mesh)
        _, losses, emb = run(state, plain, batches(shard, host, n_hosts, 3), lambda b: dist.global_batch(b, mesh))
        print(json.dumps({"host": host, "n_hosts": n_hosts, "n_devices": len(jax.devices()), "losses": losses,
                          "emb_sum": float(emb.sum()), "emb00": float(emb[0, 0])}))
    elif mode == "single":
        n_hosts = int(sys.argv[3])
        per_host = [batches(shard, h, n_hosts, 3) for h in range(n_hosts)]
        merged = [{k: np.concatenate([p[i][k] for p in per_host]) for k in per_host[0][i]} for i in range(3)]
        _, losses, emb = run(state, plain, merged, lambda b: b)
        print(json.dumps({"losses": losses, "emb_sum": float(emb.sum()), "emb00": float(emb[0, 0])}))
    elif mode == "sharded":
        data = batches(shard, 0, 1, 2)
        mesh1 = dist.make_mesh(devices=jax.devices()[:1])
        _, ref, ref_emb = run(state, plain, data, lambda b: dist.global_batch(b, mesh1))
        mesh = dist.make_mesh(model=2)
        sharded = dist.shard_params(state, mesh, dist.is_gene_table(N_GENES))
        spec = sharded.params.emb.sharding.spec
        st, got, _ = run(sharded, plain, data, lambda b: dist.global_batch(b, mesh))
        got_emb = np.asarray(jax.device_get(st.params.emb))
        accum = loop.make_accum_step(loss_fn, optim, n_micro=4)
        _, acc, acc_emb = run(state, accum, data, lambda b: dist.global_batch(b, mesh))
        bf16 = make_train_step(dist.mixed_precision(loss_fn), optim)
        st16, lo16, _ = run(state, bf16, data, lambda b: dist.global_batch(b, mesh))
        print(json.dumps({
            "n_devices": len(jax.devices()), "mesh": dict(mesh.shape), "emb_spec": str(spec),
            "ref": ref, "sharded": got, "sharded_emb_maxdiff": float(np.abs(got_emb - ref_emb).max()),
            "accum": acc, "accum_emb_maxdiff": float(np.abs(acc_emb - ref_emb).max()),
            "bf16": lo16, "bf16_param_dtype": str(st16.params.emb.dtype),
        }))


if __name__ == "__main__":
    main()
