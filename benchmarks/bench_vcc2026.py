"""VCC 2026 metrics: ours (eval/vcc2026.py) vs cell-eval2 0.20.0 `run --preset vcc2026` on the same raw-count pair.

Writes benchmarks/results/vcc2026.md: wall time and peak RSS of each (each side a fresh process timed with
/usr/bin/time -v, reading the same two .h5ad files), and the largest per-perturbation difference per metric.
Needs the separate env benchmarks/peers/envs/celleval2 (pip install cell-eval2==0.20.0).
Usage: python benchmarks/bench_vcc2026.py [N_CELLS_PER_PERT N_GENES N_PERTS N_CTRL]
"""

import pathlib
import re
import subprocess
import sys
import tempfile

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = pathlib.Path(__file__).resolve().parents[1]
CE2 = ROOT / "benchmarks/peers/envs/celleval2/bin/cell-eval2"
PY = ROOT / ".venv/bin/python"
OURS = """
import sys, time, anndata as ad, pandas as pd, numpy as np
from biojepac.eval import vcc2026 as v
t = time.perf_counter()
def load(f):
    a = ad.read_h5ad(f)
    return v.count_screen(a.X, a.obs["target"].values, a.var_names.values, control="non-targeting", name=f)
per, agg = v.score_pair(load(sys.argv[1]), load(sys.argv[2]))
pd.DataFrame(per, index=load(sys.argv[2]).perts).to_csv(sys.argv[3])
print("SECONDS", time.perf_counter() - t)
"""


def make(n_ctrl, n_per, n_genes, n_perts, seed, effect):
    rng = np.random.default_rng(seed)
    genes = [f"G{i}" for i in range(n_genes)]
    perts = [f"G{i}" for i in range(n_perts)]
    base = rng.gamma(0.3, 3.0, n_genes)
    blocks, labels = [rng.poisson(base * rng.lognormal(0, 0.3, (n_ctrl, 1)))], ["non-targeting"] * n_ctrl
    for i, p in enumerate(perts):
        mu = base * np.exp(rng.normal(0, effect, n_genes) * (rng.random(n_genes) < 0.2))
        mu[i] *= 0.1
        blocks.append(rng.poisson(mu * rng.lognormal(0, 0.3, (n_per, 1))))
        labels += [p] * n_per
    x = sp.csr_matrix(np.vstack(blocks).astype(np.float32))
    return ad.AnnData(x, obs=pd.DataFrame({"target": labels}, index=[str(i) for i in range(len(labels))]),
                      var=pd.DataFrame(index=genes))


def timed(cmd):
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = re.search(r"Elapsed \(wall clock\) time.*: (.*)", r.stderr).group(1)
    parts = [float(p) for p in wall.split(":")]
    secs = sum(p * 60 ** k for k, p in enumerate(reversed(parts)))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1)) / 1024
    return secs, rss, r


def main():
    n_per, n_genes, n_perts, n_ctrl = (int(a) for a in (sys.argv[1:] or [90, 2000, 20, 200]))
    d = pathlib.Path(tempfile.mkdtemp())
    make(n_ctrl, n_per, n_genes, n_perts, 0, 1.0).write_h5ad(d / "real.h5ad")
    make(n_ctrl, n_per, n_genes, n_perts, 1, 0.8).write_h5ad(d / "pred.h5ad")
    subprocess.run([str(PY), "-c", OURS, str(d / "pred.h5ad"), str(d / "real.h5ad"), str(d / "warm.csv")], check=True)
    ours_s, ours_mb, r = timed([str(PY), "-c", OURS, str(d / "pred.h5ad"), str(d / "real.h5ad"), str(d / "ours.csv")])
    ce_s, ce_mb, r2 = timed([str(CE2), "run", "-ap", str(d / "pred.h5ad"), "-ar", str(d / "real.h5ad"),
                             "--preset", "vcc2026", "--set", f"outdir={d / 'ce'}"])
    ours = pd.read_csv(d / "ours.csv", index_col=0)
    ce = pd.read_csv(d / "ce/results.csv", float_precision="round_trip").pivot(index="perturbation", columns="metric", values="value")
    rows = []
    for m in ["pds_cosine", "expr_mse_unbiased_capped", "expr_distance_unbiased", "de_wilcoxon_direction_fidelity_yield_raw",
              "de_wilcoxon_direction_reach_raw", "de_wilcoxon_sig_jaccard", "de_wilcoxon_lfc_nmae"]:
        a, b = ours.loc[ce.index, m].to_numpy(float), ce[m].to_numpy(float)
        nan_mis = int((np.isnan(a) != np.isnan(b)).sum())
        diff = np.nanmax(np.abs(a - b)) if np.any(~np.isnan(a)) else 0.0
        rows.append(f"| `{m}` | {diff:.2e} | {nan_mis} |")
    n_cells = n_ctrl + n_per * n_perts
    text = f"""# VCC 2026 metrics: ours vs cell-eval2 0.20.0

Written by `benchmarks/bench_vcc2026.py {n_per} {n_genes} {n_perts} {n_ctrl}`. Synthetic raw counts, real and
predicted files each {n_cells:,} cells ({n_ctrl} controls + {n_perts} perturbations x {n_per} cells) x {n_genes:,} genes.
Each side is a fresh process reading the same two .h5ad files, timed by `/usr/bin/time -v` on this machine's 2
shared cores. Ours: `biojepac.eval.vcc2026.score_pair` (after one warm-up process so numba's cache is built).
cell-eval2: `cell-eval2 run --preset vcc2026` (CPU: scanpy Wilcoxon backend). Both compute the six per-perturbation
metrics; cell-eval2 also writes a few diagnostics. Neither computes the baseline or the replicate here.

| | wall s | peak RSS MiB |
|---|---|---|
| ours | {ours_s:.1f} | {ours_mb:,.0f} |
| cell-eval2 | {ce_s:.1f} | {ce_mb:,.0f} |
| ratio | {ce_s / ours_s:.1f}x | |

Largest per-perturbation |ours - cell-eval2| (NaN where both are NaN counts as equal):

| metric | max abs diff | NaN mismatches |
|---|---|---|
""" + "\n".join(rows) + "\n"
    out = ROOT / "benchmarks/results/vcc2026.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
