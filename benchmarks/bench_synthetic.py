"""Generation time, size and truth-vs-measurement agreement of each synthetic preset.

Each preset runs in its own subprocess so that peak memory is its own. Writes
benchmarks/results/synthetic.json and synthetic.md (one table to paste into the README).

    .venv/bin/python benchmarks/bench_synthetic.py [--presets tiny demo realistic] [--seed 0]
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the solves are small; threads only fight on a shared box

RESULTS_DPATH = pathlib.Path(__file__).resolve().parent / "results"


def measure(preset: str, seed: int) -> dict:
    """Generate, write and check one preset; runs inside the child process."""
    import resource

    from biojepac.data import schema
    from biojepac.data.synthetic import get_screen_preset, make_synthetic_screen

    cfg = get_screen_preset(preset)
    t0 = time.perf_counter()
    adata = make_synthetic_screen(cfg, seed)
    gen_s = time.perf_counter() - t0
    peak_gen_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    with tempfile.TemporaryDirectory() as tmp:
        fpath = pathlib.Path(tmp) / "s.h5ad"
        t0 = time.perf_counter()
        adata.write_h5ad(fpath, compression="gzip")
        write_s = time.perf_counter() - t0
        file_mb = fpath.stat().st_size / 2**20

    agree = get_agreement(adata, cfg.target_sum, seed)
    x = adata.X
    return {
        "preset": preset,
        "seed": seed,
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "n_contexts": cfg.n_contexts,
        "n_perturbations": cfg.n_perts + cfg.n_combos,
        "control_share": float((adata.obs[schema.PERT_COL] == schema.CONTROL).mean()),
        "nnz": int(x.nnz),
        "density": float(x.nnz / (x.shape[0] * x.shape[1])),
        "x_mb": (x.data.nbytes + x.indices.nbytes + x.indptr.nbytes) / 2**20,
        "h5ad_gzip_mb": file_mb,
        "generate_s": gen_s,
        "write_s": write_s,
        "peak_rss_mb_after_generate": peak_gen_mb,
        **agree,
    }


def get_agreement(adata, target_sum: float, seed: int) -> dict:
    """Stored truth vs pseudobulk deltas of normalize_total(target_sum)+log1p counts, and split-half agreement."""
    import numpy as np
    import pandas as pd

    from biojepac.data import schema
    from biojepac.data.normalize import normalize_log1p
    from biojepac.data.pairing import pseudobulk_deltas

    norm = normalize_log1p(adata, target=target_sum)
    groups, emp = pseudobulk_deltas(norm)
    truth = adata.uns[schema.UNS_KEY]["truth"]
    key = pd.MultiIndex.from_arrays([np.asarray(truth["context"]), np.asarray(truth["target_gene"])])
    rows = key.get_indexer(pd.MultiIndex.from_frame(groups[[schema.CONTEXT_COL, schema.PERT_COL]]))
    true_d, has_effect = truth["delta"][rows], np.asarray(truth["has_effect"])[rows]
    r = np.array([np.corrcoef(t, e)[0, 1] for t, e in zip(true_d[has_effect], emp[has_effect])])
    # No-effect rows have a zero truth; two disjoint halves of the cells (controls included, so no shared
    # noise) should agree only by chance.
    half = np.random.default_rng(seed).random(norm.n_obs) < 0.5
    _, d_a = pseudobulk_deltas(norm[half])
    _, d_b = pseudobulk_deltas(norm[~half])
    split_r = np.array([np.corrcoef(a, b)[0, 1] for a, b in zip(d_a, d_b)])
    return {
        "has_effect_share": float(has_effect.mean()),
        "median_genes_abs_delta_gt_0.1": float(np.median((np.abs(true_d[has_effect]) > 0.1).sum(1))),
        "truth_vs_empirical_r_mean": float(r.mean()),
        "truth_vs_empirical_r_p10": float(np.quantile(r, 0.1)),
        "split_half_r_effect_mean": float(split_r[has_effect].mean()),
        "split_half_r_no_effect_mean": float(split_r[~has_effect].mean()) if (~has_effect).any() else None,
    }


def sweep_cells(seed: int) -> list[dict]:
    """Agreement as cells per perturbation grow (demo genes, 1 context, 20 targets): noise, not truth, limits r."""
    from biojepac.data.synthetic import get_screen_preset, make_synthetic_screen

    out = []
    for n_cells in (30, 100, 300, 1000):
        cfg = get_screen_preset("demo", n_contexts=1, n_perts=20, cells_per_pert=n_cells, control_fraction=0.5)
        out.append({"cells_per_pert": n_cells, **get_agreement(make_synthetic_screen(cfg, seed), cfg.target_sum, seed)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "demo", "realistic"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one == "sweep":
        print(json.dumps(sweep_cells(args.seed)))
        return
    if args.one:
        print(json.dumps(measure(args.one, args.seed)))
        return

    rows = []
    for preset in args.presets:
        out = subprocess.run([sys.executable, __file__, "--one", preset, "--seed", str(args.seed)],
                             check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    out = subprocess.run([sys.executable, __file__, "--one", "sweep", "--seed", str(args.seed)],
                         check=True, capture_output=True, text=True)
    sweep = json.loads(out.stdout.strip().splitlines()[-1])
    env = {"cpu_count": os.cpu_count(), "load_avg_1m_at_end": os.getloadavg()[0],
           "OPENBLAS_NUM_THREADS": os.environ["OPENBLAS_NUM_THREADS"]}
    RESULTS_DPATH.mkdir(parents=True, exist_ok=True)
    (RESULTS_DPATH / "synthetic.json").write_text(json.dumps({"env": env, "rows": rows, "sweep": sweep}, indent=1))

    head = ("| preset | cells x genes | contexts | perts | nnz density | X (MB) | .h5ad gzip (MB) | generate (s) "
            "| peak RSS (MB) | truth-vs-measured r (mean / p10) | split-half r effect / no-effect |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        no_eff = "n/a" if r["split_half_r_no_effect_mean"] is None else f"{r['split_half_r_no_effect_mean']:.2f}"
        lines.append(
            f"| {r['preset']} | {r['n_cells']:,} x {r['n_genes']:,} | {r['n_contexts']} | {r['n_perturbations']} "
            f"| {r['density']:.2f} | {r['x_mb']:.1f} | {r['h5ad_gzip_mb']:.1f} | {r['generate_s']:.1f} "
            f"| {r['peak_rss_mb_after_generate']:.0f} | {r['truth_vs_empirical_r_mean']:.2f} / {r['truth_vs_empirical_r_p10']:.2f} "
            f"| {r['split_half_r_effect_mean']:.2f} / {no_eff} |"
        )
    note = (f"\nSeed {args.seed}; {env['cpu_count']} CPU cores shared with other jobs (1-min load average {env['load_avg_1m_at_end']:.1f} "
            f"at the end), OPENBLAS_NUM_THREADS={env['OPENBLAS_NUM_THREADS']}. Truth is compared with pseudobulk deltas of "
            "normalize_total(1e4)+log1p counts, over perturbations with an effect.\n")
    lines += ["", note, "Agreement vs cells per perturbation (demo genes, 1 context, 20 targets, 50% controls):", "",
              "| cells / perturbation | truth-vs-measured r (mean / p10) | split-half r effect / no-effect |", "|---|---|---|"]
    for r in sweep:
        lines.append(f"| {r['cells_per_pert']} | {r['truth_vs_empirical_r_mean']:.2f} / {r['truth_vs_empirical_r_p10']:.2f} "
                     f"| {r['split_half_r_effect_mean']:.2f} / {r['split_half_r_no_effect_mean']:.2f} |")
    (RESULTS_DPATH / "synthetic.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
