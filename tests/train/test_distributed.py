"""Multi-host (2 processes on localhost via jax.distributed), (data, model) sharding on 4 forced host
devices, gradient accumulation and bf16: each must give the single-device numbers."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from random_screen import build_random_screen

WORKER = pathlib.Path(__file__).with_name("dist_worker.py")


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    screen = build_random_screen(n_cells=200, n_genes=30, seed=5)
    fpath = tmp_path_factory.mktemp("dist") / "shard.h5ad"
    screen.write_h5ad(fpath)
    return str(fpath)


def _env(n_devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIOJEPAC_")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}", **extra)
    return env


def _json(proc: subprocess.Popen | subprocess.CompletedProcess, out: str) -> dict:
    assert proc.returncode == 0, f"worker failed:\n{out[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_localhost_match_one_process(shard):
    port = _free_port()
    cmds = [
        ([sys.executable, str(WORKER), "host", shard],
         _env(1, BIOJEPAC_COORDINATOR=f"127.0.0.1:{port}", BIOJEPAC_NUM_PROCESSES="2", BIOJEPAC_PROCESS_ID=str(i)))
        for i in range(2)
    ] + [([sys.executable, str(WORKER), "single", shard, "2"], _env(1))]  # the reference, run alongside
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for cmd, env in cmds]
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=300)
        results.append(_json(p, out))
    *hosts, ref = results
    assert [h["n_hosts"] for h in hosts] == [2, 2] and hosts[0]["n_devices"] == 2
    for h in hosts:  # every host sees the same global loss, equal to one process on the merged batch
        np.testing.assert_allclose(h["losses"], ref["losses"], rtol=1e-5)
        np.testing.assert_allclose([h["emb_sum"], h["emb00"]], [ref["emb_sum"], ref["emb00"]], rtol=1e-5, atol=1e-6)
    assert ref["losses"][0] != ref["losses"][2], "training moved the loss"


def test_sharded_accumulated_and_bf16_steps_on_four_devices(shard):
    r = subprocess.run([sys.executable, str(WORKER), "sharded", shard], env=_env(4), capture_output=True, text=True, timeout=180)
    r = _json(r, r.stdout + r.stderr)
    assert r["n_devices"] == 4 and r["mesh"] == {"data": 2, "model": 2}
    assert "model" in r["emb_spec"], "the gene table is split along the model axis"
    np.testing.assert_allclose(r["sharded"], r["ref"], rtol=1e-5)
    assert r["sharded_emb_maxdiff"] < 1e-5
    np.testing.assert_allclose(r["accum"], r["ref"], rtol=1e-5)  # 4 micro-batches == one batch
    assert r["accum_emb_maxdiff"] < 1e-5
    np.testing.assert_allclose(r["bf16"], r["ref"], rtol=3e-2)  # bf16 has ~3 significant digits
    assert r["bf16"] != r["ref"], "bf16 really computed in bf16"
    assert r["bf16_param_dtype"] == "float32", "master weights stay float32"
