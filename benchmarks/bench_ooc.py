"""Out-of-core vs in-memory `data prepare` (normalise + log1p + 500 seurat HVGs + pseudobulk) on a
synthetic counts screen that fits in memory: wall time and peak RSS of each in a fresh process, and
whether the outputs agree (same HVGs, max |difference| of X and of the pseudobulk means).

    nice .venv/bin/python benchmarks/bench_ooc.py               # writes benchmarks/results/ooc.{json,md}
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _backed import SCRATCH_DPATH, run_measured, write_results, write_synthetic  # noqa: E402

N_CELLS, N_GENES, DENSITY, N_TOP = 200_000, 2000, 0.05, 500

IN_MEMORY = """
import json, time, anndata as ad, numpy as np
from biojepac.data import normalize, pairing
t0 = time.perf_counter()
a = normalize.select_hvg(normalize.normalize_log1p(ad.read_h5ad({src!r})), {n_top})
groups, means = pairing.pseudobulk(a)
np.save({means_out!r}, means)
with open({genes_out!r}, "w") as f:
    f.write("\\n".join(a.var_names))
ad.AnnData(X=a.X, obs=a.obs[[]], var=a.var[[]]).write_h5ad({x_out!r})
print(json.dumps({{"seconds": time.perf_counter() - t0}}))
"""

OUT_OF_CORE = """
import json, time
from biojepac.data.ooc import OocConfig, prepare_out_of_core
t0 = time.perf_counter()
prepare_out_of_core({src!r}, {dst!r}, OocConfig(n_top_genes={n_top}, chunk_rows=8192))
print(json.dumps({{"seconds": time.perf_counter() - t0}}))
"""


def compare(dst, x_ref, genes_ref, means_ref) -> dict:
    import anndata as ad
    import numpy as np

    got, ref = ad.read_h5ad(dst), ad.read_h5ad(x_ref)
    same = list(got.var_names) == pathlib.Path(genes_ref).read_text().split("\n")
    return {
        "same_hvgs": same,
        "max_abs_diff_X": float(abs(got.X - ref.X).max()) if same else float("nan"),
        "max_abs_diff_pseudobulk": float(np.abs(got.uns["pseudobulk"]["means"] - np.load(means_ref)).max()),
    }


def main() -> None:
    info = write_synthetic(SCRATCH_DPATH / f"ooc_{N_CELLS}.h5ad", N_CELLS, N_GENES, DENSITY, seed=1)
    src, tmp = info["fpath"], SCRATCH_DPATH
    paths = dict(means_out=str(tmp / "ooc_ref_means.npy"), genes_out=str(tmp / "ooc_ref_genes.txt"), x_out=str(tmp / "ooc_ref_x.h5ad"))
    mem = run_measured(IN_MEMORY.format(src=src, n_top=N_TOP, **paths))
    assert mem["ok"], mem
    dst = str(tmp / "ooc_prepared.h5ad")
    ooc = run_measured(OUT_OF_CORE.format(src=src, dst=dst, n_top=N_TOP))
    assert ooc["ok"], ooc
    agree = compare(dst, paths["x_out"], paths["genes_out"], paths["means_out"])
    rows = [
        {"path": "in-memory (scanpy)", "seconds": mem["seconds"], "peak_rss_mib": mem["peak_rss_mb"]},
        {"path": "out-of-core (dask, 8192-cell chunks)", "seconds": ooc["seconds"], "peak_rss_mib": ooc["peak_rss_mb"]},
    ]
    result = {"n_cells": N_CELLS, "n_genes": N_GENES, "density": DENSITY, "n_top_genes": N_TOP, "file_mib": info["bytes"] / 2**20, "rows": rows, **agree}
    note = (f"{N_CELLS:,} cells x {N_GENES:,} genes, ~{DENSITY:.0%} non-zero counts ({info['bytes'] / 2**20:.0f} MiB .h5ad): "
            f"normalize_total (median) + log1p + {N_TOP} seurat HVGs + pseudobulk per (context, target_gene). "
            "Fresh process each, 2 shared CPU cores, nice 10.\n\n"
            f"Agreement: same HVG set = {agree['same_hvgs']}, max |dX| = {agree['max_abs_diff_X']:.2e}, "
            f"max |d pseudobulk| = {agree['max_abs_diff_pseudobulk']:.2e}.\n\n")
    write_results("ooc", "Out-of-core preprocessing", result, note, rows, ["path", "seconds", "peak_rss_mib"])


if __name__ == "__main__":
    main()
