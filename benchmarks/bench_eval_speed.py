"""Time and peak memory of `biojepac.eval` vs cell-eval 0.8.2 (VCC profile) on the same files.

Generates a synthetic VCC-shaped screen (default 11,000 cells x 18,080 genes x 50 perturbations + controls):
real = integer counts (CSR, as the VCC ground truth), pred = log1p-normalised (CSR, as submissions). Each
scorer runs in its own subprocess, end to end from the file paths (read, normalise, DE, metrics, write its
results); each reports its own wall time and peak RSS (getrusage). Then the per-perturbation numbers are
compared. Writes benchmarks/results/eval_speed.{json,md}.

    nice .venv/bin/python benchmarks/bench_eval_speed.py
"""

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from biojepac.bench.provenance import git_commit

RESULTS_DPATH = pathlib.Path(__file__).resolve().parent / "results"
OURS_CLI = "biojepac `--profile vcc` (default outputs: CSV and JSON)"
OURS_JIT = "the same, kernels compiled just in time (`BIOJEPAC_JIT_ONLY=1`: no ahead-of-time build)"
STARTUP = ("import biojepac.cli, biojepac.eval.evaluate, biojepac.eval.h5read, biojepac.eval.vcc\n"
           "from biojepac.eval.inputs import warm_up; warm_up()")
"""A process that only starts: the command line's and the scoring modules' imports and the kernels' loading."""


def make_files(dpath: pathlib.Path, n_cells: int, n_genes: int, n_perts: int, seed: int) -> tuple[str, str]:
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    genes = np.array([f"GENE{i:05d}" for i in range(n_genes)])
    perts = ["non-targeting"] + list(genes[rng.choice(n_genes, n_perts, replace=False)])
    n_ctrl = n_cells - n_perts * ((n_cells * 9 // 10) // n_perts)
    labels = np.r_[np.zeros(n_ctrl, int), np.repeat(np.arange(1, n_perts + 1), (n_cells - n_ctrl) // n_perts)]
    labels = np.r_[labels, np.zeros(n_cells - len(labels), int)]
    base = rng.gamma(0.3, 1.5, size=n_genes)  # ~25% of entries non-zero, mostly small counts (many ties)
    fold = np.ones((n_perts + 1, n_genes))
    for i in range(1, n_perts + 1):
        hit = rng.choice(n_genes, rng.integers(10, 600), replace=False)
        fold[i, hit] = rng.choice([0.4, 2.5], size=len(hit))

    def screen(noise: float, counts: bool, tag: str) -> str:
        r = np.random.default_rng(seed + len(tag))
        f = fold * np.exp(r.normal(0, noise, fold.shape)) if noise else fold
        blocks = []
        for lo in range(0, n_cells, 1000):
            idx = labels[lo : lo + 1000]
            depth = r.lognormal(0, 0.3, size=(len(idx), 1))
            x = r.poisson(base[None] * f[idx] * depth).astype(np.float32)
            if not counts:
                x = np.log1p(x / x.sum(1, keepdims=True).clip(1) * 1e4).astype(np.float32)
            blocks.append(sp.csr_matrix(x))
        obs = pd.DataFrame({"target_gene": np.array(perts)[labels]}, index=[f"{tag}{i}" for i in range(n_cells)])
        fpath = dpath / f"{tag}.h5ad"
        ad.AnnData(X=sp.vstack(blocks).tocsr(), obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(fpath)
        return str(fpath)

    return screen(0.0, True, "real"), screen(0.3, False, "pred")


def worker(which: str, real: str, pred: str, out_dpath: str) -> None:
    """Runs in a subprocess: score, write per-perturbation metrics, print timing + peak RSS as JSON."""

    if which == "ours":
        import pandas  # noqa: F401  (evaluate() builds its DataFrame with it; cell-eval's import loads it too)

        from biojepac.eval.evaluate import evaluate

        t0 = time.perf_counter()
        out = evaluate(pred, real, profile="vcc", out_dpath=out_dpath, plots=False)
        seconds = time.perf_counter() - t0
        per = out["per_perturbation"][["overlap_at_N", "discrimination_score_l1", "mae"]]
    elif which == "floor":
        floor(real, pred)
        return
    else:
        import logging

        logging.disable(logging.WARNING)
        from cell_eval import MetricsEvaluator

        t0 = time.perf_counter()
        ev = MetricsEvaluator(adata_pred=pred, adata_real=real, control_pert="non-targeting",
                              pert_col="target_gene", outdir=out_dpath)
        res, _ = ev.compute(profile="vcc", write_csv=True)
        seconds = time.perf_counter() - t0
        per = res.to_pandas().set_index("perturbation")[["overlap_at_N", "discrimination_score_l1", "mae"]]
    per.sort_index().to_csv(pathlib.Path(out_dpath) / "bench_per_pert.csv")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_mib}))


def floor(real: str, pred: str) -> None:
    """Our steps timed one by one, both files at once as in `evaluate`: reading (and normalising the
    counts; loading the compiled kernels falls in this step), the Mann-Whitney pass (keys, sort and
    walk of every range of genes, on one worker thread per core), and the VCC metrics. Writing the output
    comes on top."""
    import concurrent.futures

    from biojepac.eval import vcc
    from biojepac.eval.inputs import read_scored_screen
    from biojepac.eval.mwu import Workers
    from biojepac.eval.h5read import small_pages
    from biojepac.eval.stats import N_THREADS, summarize

    with concurrent.futures.ThreadPoolExecutor(2) as pool, Workers(N_THREADS) as workers, small_pages():
        t0 = time.perf_counter()
        screens = list(pool.map(lambda f: read_scored_screen(f, pert_col="target_gene", control="non-targeting"),
                                (real, pred)))
        read_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        summaries = list(pool.map(lambda sc: summarize(sc, with_de=True, workers=workers), screens))
        mwu_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        vcc.vcc_metrics(screens[0], summaries[0], screens[1], summaries[1])
        metrics_s = time.perf_counter() - t0
    print(json.dumps({"read_s": read_s, "mwu_s": mwu_s, "metrics_s": metrics_s}))


def run_cli(cmd: list[str], env: dict | None = None) -> dict:
    """Run a scorer's command line as a user would; wall time and peak RSS of that process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=None if env is None else {**os.environ, **env})
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    err = proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed:\n{err[-3000:]}")
    return {"process_seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024, "load_1min": os.getloadavg()[0]}


def median_run(runs: list[dict]) -> dict:
    """Each timing's median over the runs; peak memory is the largest seen."""
    out = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    if "peak_rss_mib" in out:
        out["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
    out["runs"] = len(runs)
    if "process_seconds" in out:
        out["process_seconds_each"] = [r["process_seconds"] for r in runs]
    return out


def run_worker(which: str, real: str, pred: str, out_dpath: pathlib.Path, env: dict | None = None) -> dict:
    out_dpath.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", which, "--real", real, "--pred", pred,
                           "--out", str(out_dpath)], capture_output=True, text=True, check=False,
                          env=None if env is None else {**os.environ, **env})
    if proc.returncode != 0:
        raise RuntimeError(f"{which} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_seconds"] = time.perf_counter() - t0  # including interpreter start and imports
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=["ours", "cell-eval", "floor"])
    ap.add_argument("--real")
    ap.add_argument("--pred")
    ap.add_argument("--out")
    ap.add_argument("--n-cells", type=int, default=11_000)
    ap.add_argument("--n-genes", type=int, default=18_080)
    ap.add_argument("--n-perts", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dpath", help="keep the generated files here and reuse them if present")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each API call and of our command lines (median "
                    "reported); cell-eval's command lines, at about a minute a run, run once")
    ap.add_argument("--only", choices=["ours", "cell-eval"], help="time one scorer (no comparison, nothing written)")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.real, args.pred, args.out)
        return

    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        data_dpath = pathlib.Path(args.data_dpath) if args.data_dpath else tmp
        data_dpath.mkdir(parents=True, exist_ok=True)
        if (data_dpath / "real.h5ad").is_file() and (data_dpath / "pred.h5ad").is_file():
            real, pred = str(data_dpath / "real.h5ad"), str(data_dpath / "pred.h5ad")
        else:
            real, pred = make_files(data_dpath, args.n_cells, args.n_genes, args.n_perts, args.seed)
        if args.only:
            print(run_worker(args.only, real, pred, tmp / args.only))
            return
        load_at_start = list(os.getloadavg())
        sizes = {k: pathlib.Path(v).stat().st_size / 2**20 for k, v in (("real", real), ("pred", pred))}
        # Without the ahead-of-time build (no C compiler at set-up, `eval/kernels.py`), numba compiles the
        # kernels the first time they run and caches them on disk; later processes still import numba:
        # one run with an empty cache measures that once-only cost.
        jit_env = {"BIOJEPAC_JIT_ONLY": "1"}
        cold = run_worker("ours", real, pred, tmp / "ours-cold", env={**jit_env, "NUMBA_CACHE_DIR": str(tmp / "numba-cold")})
        ours = median_run([run_worker("ours", real, pred, tmp / "ours") for _ in range(args.repeat)])
        ref = median_run([run_worker("cell-eval", real, pred, tmp / "cell-eval") for _ in range(args.repeat)])
        bin_dpath = pathlib.Path(sys.executable).parent
        common = ["--profile", "vcc", "--pert-col", "target_gene", "--control-pert", "non-targeting"]
        # The target pair (ours, cell-eval on 2 threads) runs in alternation, so that a change in the shared
        # machine's speed during the benchmark falls on both sides alike.
        pairs = [(run_cli([str(bin_dpath / "biojepac"), "evaluate", "--pred", pred, "--real", real,
                           "--out-dpath", str(tmp / "cli-ours"), "--profile", "vcc"]),
                  run_cli([str(bin_dpath / "cell-eval"), "run", "-ap", pred, "-ar", real, "-o", str(tmp / "cli-ce2"),
                           "--num-threads", "2", *common]))
                 for _ in range(args.repeat)]
        cli = {
            OURS_CLI: median_run([ours_run for ours_run, _ in pairs]),
            "biojepac `--profile vcc --plots` (+ report.md and plots, on request)": median_run([run_cli(
                [str(bin_dpath / "biojepac"), "evaluate", "--pred", pred, "--real", real,
                 "--out-dpath", str(tmp / "cli-ours-plots"), "--profile", "vcc", "--plots"]) for _ in range(args.repeat)]),
            OURS_JIT: median_run([run_cli([str(bin_dpath / "biojepac"), "evaluate", "--pred", pred, "--real", real,
                                           "--out-dpath", str(tmp / "cli-ours-jit"), "--profile", "vcc"], env=jit_env)
                                  for _ in range(args.repeat)]),
            "biojepac, default `--profile all` (every profile, no report)": median_run([run_cli(
                [str(bin_dpath / "biojepac"), "evaluate", "--pred", pred, "--real", real,
                 "--out-dpath", str(tmp / "cli-ours-all")]) for _ in range(args.repeat)]),
            "cell-eval default (1 thread)": run_cli([str(bin_dpath / "cell-eval"), "run", "-ap", pred, "-ar", real,
                                                     "-o", str(tmp / "cli-ce1"), *common]),
            "cell-eval --num-threads 2": median_run([ce_run for _, ce_run in pairs]),
        }
        startup = median_run([run_cli([sys.executable, "-c", STARTUP]) for _ in range(args.repeat)])
        floor_s = median_run([json.loads(subprocess.run(
            [sys.executable, __file__, "--worker", "floor", "--real", real, "--pred", pred, "--out", str(tmp)],
            capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]) for _ in range(args.repeat)])
        a = pd.read_csv(tmp / "ours" / "bench_per_pert.csv", index_col=0)
        b = pd.read_csv(tmp / "cell-eval" / "bench_per_pert.csv", index_col=0)
    same = {
        "perturbations_equal": list(a.index) == list(b.index),
        "des_equal": bool((a["overlap_at_N"].to_numpy() == b["overlap_at_N"].to_numpy()).all()),
        "pds_equal": bool((a["discrimination_score_l1"].to_numpy() == b["discrimination_score_l1"].to_numpy()).all()),
        "mae_max_abs_diff": float(np.abs(a["mae"].to_numpy() - b["mae"].to_numpy()).max()),
        "mean_des": float(a["overlap_at_N"].mean()), "mean_pds": float(a["discrimination_score_l1"].mean()),
        "mean_mae": float(a["mae"].mean()),
    }
    result = {
        "shape": {"cells_per_file": args.n_cells, "genes": args.n_genes, "perturbations": args.n_perts},
        "file_mib": sizes, "ours": ours, "ours_first_run_compiling": cold, "cell_eval": ref,
        "speedup": ref["seconds"] / ours["seconds"], "cli": cli, "floor": floor_s, "startup": startup,
        "cli_speedup_vs_default": cli["cell-eval default (1 thread)"]["process_seconds"] / cli[OURS_CLI]["process_seconds"],
        "cli_speedup_vs_2_threads": cli["cell-eval --num-threads 2"]["process_seconds"] / cli[OURS_CLI]["process_seconds"],
        "memory_ratio": ref["peak_rss_mib"] / ours["peak_rss_mib"], "agreement": same,
        "load_average_at_start": load_at_start, "load_average_at_end": list(os.getloadavg()), "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": git_commit(),
    }
    floor_total = floor_s["read_s"] + floor_s["mwu_s"] + floor_s["metrics_s"]
    budget = ref["seconds"] / 20
    floor_verdict = (": these steps alone exceed the 20x budget." if floor_total >= budget else
                     f", leaving {budget - floor_total:.2f} s for the output.")
    RESULTS_DPATH.mkdir(parents=True, exist_ok=True)
    (RESULTS_DPATH / "eval_speed.json").write_text(json.dumps(result, indent=2))
    md = [
        "# Evaluation speed: biojepac vs cell-eval 0.8.2 (VCC profile)", "",
        f"{args.n_cells:,} cells per file x {args.n_genes:,} genes x {args.n_perts} perturbations (+ controls); "
        f"real = counts CSR ({sizes['real']:.0f} MiB), pred = log1p CSR ({sizes['pred']:.0f} MiB). "
        "End to end from file paths (read, normalise, DE, metrics, write). Each scorer in its own process.", "",
        "Python API (timed from the call, after imports; both use the 2 cores: our default, and cell-eval's "
        f"`MetricsEvaluator` default `num_threads=-1`). Median of {args.repeat} runs each, every run in a fresh "
        "process.", "",
        "| scorer | wall time (s) | process incl. imports (s) | peak RSS (MiB) |", "|---|---|---|---|",
        f"| biojepac `evaluate()` | {ours['seconds']:.1f} | {ours['process_seconds']:.1f} | {ours['peak_rss_mib']:.0f} |",
        f"| cell-eval `MetricsEvaluator` | {ref['seconds']:.1f} | {ref['process_seconds']:.1f} | {ref['peak_rss_mib']:.0f} |", "",
        f"Speed-up: **{result['speedup']:.1f}x**; peak memory: cell-eval / biojepac = {result['memory_ratio']:.2f}. "
        f"Our kernels are built ahead of time at set-up (`scripts/env.sh`; `src/biojepac/eval/kernels.py`). Without "
        f"that build, the first run compiles them just in time (numba caches them on disk after): "
        f"{cold['seconds']:.1f} s.", "",
        "Command line, as a user runs it (whole process: start-up, imports, scoring, CSV/JSON out). Ours with its "
        "default outputs, per_perturbation.csv and aggregates.json (report.md and its plots are written on request, "
        "`--plots`: matplotlib's import and the drawing take longer than the scoring); for reference, ours with the "
        f"report, and with every profile. Medians of {args.repeat} runs, but one run of cell-eval's default; ours "
        "and cell-eval on 2 threads ran in alternation (seconds, in order: ours "
        f"{', '.join(f'{x:.2f}' for x in cli[OURS_CLI]['process_seconds_each'])}; cell-eval "
        f"{', '.join(f'{x:.1f}' for x in cli['cell-eval --num-threads 2']['process_seconds_each'])}):", "",
        "| command | process wall (s) | peak RSS (MiB) | 1-min load after |", "|---|---|---|---|",
        *[f"| {name} | {r['process_seconds']:.2f} | {r['peak_rss_mib']:.0f} | {r['load_1min']:.1f} |"
          for name, r in cli.items()], "",
        f"Speed-up of ours with its default outputs: **{result['cli_speedup_vs_default']:.1f}x** against cell-eval's "
        f"default, **{result['cli_speedup_vs_2_threads']:.1f}x** against cell-eval on 2 threads (the target is 25x "
        f"against 2 threads: {'met' if result['cli_speedup_vs_2_threads'] >= 25 else 'not met'}; at 25x ours would "
        f"take {cli['cell-eval --num-threads 2']['process_seconds'] / 25:.2f} s).", "",
        f"Where our time goes (both files at once, 2 threads, medians): reading and normalising "
        f"{floor_s['read_s']:.2f} s (loading the compiled kernels included), the Mann-Whitney pass (keys, "
        f"sort, walk) {floor_s['mwu_s']:.2f} s, the VCC metrics {floor_s['metrics_s']:.2f} s; together "
        f"{floor_total:.2f} s, against {ref['seconds'] / 20:.2f} s for 20x cell-eval's API time{floor_verdict} "
        f"A process that only starts (Python, the command line's and the scoring modules' imports, loading the "
        f"compiled kernels; the command line overlaps the file reads with these) takes {startup['process_seconds']:.2f} s.", "",
        f"Agreement: DES equal per perturbation: {same['des_equal']}; PDS equal: {same['pds_equal']}; "
        f"max |MAE diff| = {same['mae_max_abs_diff']:.2e} (means: DES {same['mean_des']:.4f}, "
        f"PDS {same['mean_pds']:.4f}, MAE {same['mean_mae']:.4f}).", "",
        f"Machine: {os.cpu_count()} CPUs, 1-minute load average at the start {result['load_average_at_start'][0]:.1f}, "
        f"at the end {os.getloadavg()[0]:.1f} (shared machine: wall times move with the load). "
        f"Run {result['when']} at commit {result['commit']}.", "",
        "Regenerate: `nice .venv/bin/python benchmarks/bench_eval_speed.py`", "",
    ]
    old = (RESULTS_DPATH / "eval_speed.md").read_text() if (RESULTS_DPATH / "eval_speed.md").is_file() else ""
    mark = "<!-- vcc2026 (written by benchmarks/bench_vcc2026.py) -->"  # that script's section is kept
    keep = "\n\n" + mark + old.split(mark, 1)[1] if mark in old else ""
    (RESULTS_DPATH / "eval_speed.md").write_text("\n".join(md) + keep)
    print("\n".join(md))


if __name__ == "__main__":
    main()
