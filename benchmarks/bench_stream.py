"""Streaming loader: throughput (cells/s) and peak RSS as the backed file grows from 100k to 1M cells.

Synthetic CSR screens (2,000 genes, ~5% non-zero) are written chunk by chunk under /tmp/biojepac_bench.
Each size streams one full epoch of top-k token batches in a fresh process, so the peak RSS is that
of the loader alone; it should stay flat while the file (and what loading it would cost) grows.

    nice .venv/bin/python benchmarks/bench_stream.py            # writes benchmarks/results/stream.{json,md}
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _backed import SCRATCH_DPATH, run_measured, write_results, write_synthetic  # noqa: E402

SIZES = (100_000, 250_000, 500_000, 1_000_000)
N_GENES, DENSITY = 2000, 0.05

CHILD = """
import json, time, h5py
from biojepac.data.stream import CellStream, StreamConfig
cfg = StreamConfig(shard_fpaths=({fpath!r},), kind={kind!r}, batch_size=256, top_k=256, block_rows=1024, window_blocks=16, seed=0)
s = CellStream(cfg)
n = min(s.batches_per_epoch, {max_batches})
t0 = time.perf_counter()
cells = 0
for _ in range(n):
    b = s.next_batch()
    cells += 256
dt = time.perf_counter() - t0
with h5py.File({fpath!r}, "r") as f:
    x_bytes = f["X/data"].nbytes + f["X/indices"].nbytes + f["X/indptr"].nbytes
print(json.dumps({{"cells": cells, "seconds": dt, "cells_per_s": cells / dt, "csr_in_memory_mb": x_bytes / 2**20}}))
"""


def main() -> None:
    rows = []
    for n in SIZES:
        info = write_synthetic(SCRATCH_DPATH / f"stream_{n}.h5ad", n, N_GENES, DENSITY, seed=n)
        print(f"{n} cells: file {info['bytes'] / 2**20:.0f} MiB", flush=True)
        for kind, max_batches in (("cells", 10**9), ("pairs", 400)):
            if kind == "pairs" and n != SIZES[-1]:
                continue
            r = run_measured(CHILD.format(fpath=info["fpath"], kind=kind, max_batches=max_batches))
            assert r["ok"], r
            row = {"n_cells": n, "kind": kind, "file_mib": info["bytes"] / 2**20, "csr_in_memory_mib": r["csr_in_memory_mb"],
                   "cells_streamed": r["cells"], "cells_per_s": r["cells_per_s"], "peak_rss_mib": r["peak_rss_mb"]}
            print(row, flush=True)
            rows.append(row)
    cols = ["n_cells", "kind", "file_mib", "csr_in_memory_mib", "cells_streamed", "cells_per_s", "peak_rss_mib"]
    note = ("Top-k token batches (k=256, batch 256, 1024-row blocks, 16-block windows) from one backed .h5ad, "
            f"{N_GENES} genes, ~{DENSITY:.0%} non-zero; one fresh process per row, 2 shared CPU cores, nice 10. "
            "`pairs` streams 400 batches of (perturbed, matched control) pairs.\n\n")
    write_results("stream", "Streaming loader", rows, note, rows, cols)


if __name__ == "__main__":
    main()
