"""Training throughput against the number of devices: BioJEPAC's stage-1 step (`cpu-small` preset)
data-parallel over 1/2/4/8 forced host CPU devices, fed by the streaming loader from a backed file.

Forced host devices split the same 2 shared cores, so this proves the sharded step runs and shows its
overhead, not a speed-up. (No accelerator was lent to the task that wrote these results.)

    nice .venv/bin/python benchmarks/bench_devices.py           # writes benchmarks/results/devices.{json,md}
"""

import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _backed import REPO_DPATH, SCRATCH_DPATH, run_measured, write_results  # noqa: E402

N_CELLS, N_GENES, BATCH, N_TOKENS, WARMUP, STEPS = 20_000, 500, 32, 128, 2, 10

CHILD = """
import json, tempfile, pathlib, jax
from biojepac.models.jepa.config import get_preset
from biojepac.models.jepa.streamed import StreamedPretrainConfig, pretrain_streamed
with tempfile.TemporaryDirectory() as d:
    pretrain_streamed(StreamedPretrainConfig(shards=({fpath!r},), run_dpath=d, preset="cpu-small", batch_size={batch},
                                             n_tokens={n_tokens}, steps_scale=({warmup} + {steps}) / get_preset("cpu-small").pretrain.n_steps, progress=False, ckpt_every=10**6))
    rows = [json.loads(r) for r in (pathlib.Path(d) / "metrics.jsonl").read_text().splitlines()]
# run_loop logs every step here (wall clock since the loop started, synchronised by reading the loss);
# time the steps after the first {warmup}, which include compilation.
wall = {{r["step"]: r["wall_s"] for r in rows}}
dt = wall[{warmup} + {steps}] - wall[{warmup}]
print(json.dumps({{"n_devices": len(jax.devices()), "platform": jax.devices()[0].platform, "compile_and_first_s": wall[1],
                  "step_s": dt / {steps}, "cells_per_s": {batch} * {steps} / dt}}))
"""


def make_file() -> str:
    fpath = SCRATCH_DPATH / f"devices_{N_CELLS}x{N_GENES}.h5ad"
    if not fpath.exists():
        import anndata as ad

        sys.path.insert(0, str(REPO_DPATH / "tests"))
        from conftest import build_random_screen

        fpath.parent.mkdir(parents=True, exist_ok=True)
        build_random_screen(n_cells=N_CELLS, n_genes=N_GENES, counts=False, seed=4).write_h5ad(fpath)
        del ad
    return str(fpath)


def main() -> None:
    fpath = make_file()
    rows = []
    for n in (1, 2, 4, 8):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
        code = CHILD.format(fpath=fpath, batch=BATCH, n_tokens=N_TOKENS, warmup=WARMUP, steps=STEPS)
        r = run_measured(code, env=env)
        assert r["ok"], r
        rows.append({"devices": f"{n} x cpu (forced)", "global_batch": BATCH, "step_s": r["step_s"], "cells_per_s": r["cells_per_s"], "peak_rss_mib": r["peak_rss_mb"], "load_avg_1m": r["loadavg_1m_after"]})
        print(rows[-1], flush=True)
    cols = ["devices", "global_batch", "step_s", "cells_per_s", "peak_rss_mib", "load_avg_1m"]
    note = (f"BioJEPAC pretrain step, `cpu-small` preset (d=64, 2 layers), top-{N_TOKENS} expressed tokens of {N_GENES} genes, "
            f"global batch {BATCH} split over the devices, streamed from a backed .h5ad; mean of {STEPS} steps after "
            f"{WARMUP} warm-up steps (compilation). Forced host devices share the same 2 CPU cores (nice 10, machine shared), so more devices "
            "cannot be faster here: the table shows the data-parallel step works at each size and what it costs.\n\n")
    write_results("devices", "Training throughput vs devices", rows, note, rows, cols)


if __name__ == "__main__":
    main()
