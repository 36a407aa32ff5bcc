"""Peak memory and time of `biojepac submit` vs cell-eval 0.8.2 `prep` on a VCC-shaped prediction.

Builds a sparse log1p prediction (n cells x 18,080 genes, ~10% non-zero, `non-targeting` controls), runs both
packagers as separate processes (peak RSS from getrusage of the child), and checks that the two packages hold
the same matrix. Run: `nice .venv/bin/python benchmarks/bench_submit.py [--n-cells 20000]`.
Writes benchmarks/results/submit.{md,json}.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tarfile
import tempfile
import time

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

REPO = pathlib.Path(__file__).resolve().parents[1]
N_GENES = 18080


def make_prediction(dpath: pathlib.Path, n_cells: int, density: float, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    x = sp.random(n_cells, N_GENES, density=density, format="csr", dtype=np.float32, random_state=rng)
    x.data = np.log1p(x.data * 20).astype(np.float32)
    labels = np.where(rng.random(n_cells) < 0.2, "non-targeting", rng.choice([f"P{i}" for i in range(100)], n_cells))
    genes = [f"GENE{i:05d}" for i in range(N_GENES)]
    ad.AnnData(X=x, obs=pd.DataFrame({"target_gene": labels}, index=np.arange(n_cells).astype(str)),
               var=pd.DataFrame(index=genes)).write_h5ad(dpath / "pred.h5ad")
    pd.Series(genes).to_csv(dpath / "gene_names.csv", index=False, header=False)


def run_measured(cmd: list[str]) -> dict:
    """Wall time and peak RSS (MiB) of one command, measured by a fresh wrapper process so that the
    children's max RSS belongs to that command alone."""
    wrapper = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "sys.stderr.write(p.stderr[-2000:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(p.returncode)")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    return {"seconds": wall, "peak_rss_mib": int(proc.stdout.split()[-1]) / 1024}


def read_package(vcc: pathlib.Path, dpath: pathlib.Path) -> ad.AnnData:
    with tarfile.open(vcc) as tar:
        tar.extract("pred.h5ad.zst", dpath, filter="data")
    subprocess.run(["zstd", "-d", "-q", "-f", str(dpath / "pred.h5ad.zst"), "-o", str(dpath / "pred.h5ad")], check=True)
    return ad.read_h5ad(dpath / "pred.h5ad")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-cells", type=int, default=20000)
    parser.add_argument("--density", type=float, default=0.1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=REPO / "benchmarks") as tmp:
        tmp = pathlib.Path(tmp)
        make_prediction(tmp, args.n_cells, args.density)
        in_mib = (tmp / "pred.h5ad").stat().st_size / 2**20
        ours = run_measured([sys.executable, "-m", "biojepac.cli", "submit", "--pred", str(tmp / "pred.h5ad"),
                             "--genes", str(tmp / "gene_names.csv"), "--out", str(tmp / "ours.vcc")])
        theirs = run_measured([str(REPO / ".venv" / "bin" / "cell-eval"), "prep", "-i", str(tmp / "pred.h5ad"),
                               "-g", str(tmp / "gene_names.csv"), "-o", str(tmp / "theirs.vcc")])
        (tmp / "a").mkdir(), (tmp / "b").mkdir()
        a, b = read_package(tmp / "ours.vcc", tmp / "a"), read_package(tmp / "theirs.vcc", tmp / "b")
        same = (a.shape == b.shape and (a.X != b.X).nnz == 0 and a.obs.equals(b.obs)
                and list(a.var_names) == list(b.var_names))
        sizes = {"ours_vcc_mib": (tmp / "ours.vcc").stat().st_size / 2**20,
                 "theirs_vcc_mib": (tmp / "theirs.vcc").stat().st_size / 2**20}
    res = {"n_cells": args.n_cells, "n_genes": N_GENES, "density": args.density, "input_mib": in_mib,
           "biojepac_submit": ours, "cell_eval_prep": theirs, "identical_packages": bool(same), **sizes}
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "submit.json").write_text(json.dumps(res, indent=1))
    md = ["# `biojepac submit` vs `cell-eval prep` (0.8.2)", "",
          f"{args.n_cells:,} cells x {N_GENES:,} genes, {args.density:.0%} non-zero CSR log1p ({in_mib:.0f} MiB h5ad). "
          "Peak RSS of each child process (includes the Python interpreter and imports).", "",
          "| packager | wall s | peak RSS MiB | .vcc MiB |", "|---|---|---|---|",
          f"| biojepac submit | {ours['seconds']:.1f} | {ours['peak_rss_mib']:.0f} | {sizes['ours_vcc_mib']:.0f} |",
          f"| cell-eval prep | {theirs['seconds']:.1f} | {theirs['peak_rss_mib']:.0f} | {sizes['theirs_vcc_mib']:.0f} |", "",
          f"Packages hold identical matrices, obs and genes: {same}.", ""]
    (out / "submit.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
