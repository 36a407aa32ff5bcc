"""Every baseline through the same evaluation (VCC profile + report + calibrated metrics, bootstrap CIs).

Tasks:
- synthetic unseen perturbations (demo screen, context ctx0) and few-shot context (ctx2, k=10 shots);
- Norman19 (K562, CRISPRa) unseen single perturbations;
- Norman19 combinations predicted from their singles (every single in train, every combination in test);
- McFaline-Figueroa23 (CRISPRi), cell line U87MG held out (zero-shot context).

Each model is fitted on the split's train cells (+ all controls), then `biojepac.predict.predict_cells` writes
n_cells per test perturbation (the real count) as matched controls + predicted shift, with the real controls.
The VCC score's baseline is cell-eval's cell-mean built from the training cells of the evaluated context.
A held-out cell line has no training perturbations, and other lines' absolute means would be a strawman, so
there the baseline is our `cell-mean` prediction (the line's controls + the mean training delta).

Run: `nice .venv/bin/python benchmarks/bench_baselines.py [--quick]`. Writes benchmarks/results/baselines.{md,json}.
"""

import argparse
import json
import pathlib
import platform
import time
import warnings

import numpy as np
import pandas as pd

from biojepac.bench.provenance import git_commit
from biojepac.data import schema, splits
from biojepac.data.normalize import normalize_log1p
from biojepac.data.recipes import load_norman_mcfaline
from biojepac.data.synthetic import get_screen_preset, make_synthetic_screen
from biojepac.errors import InputError
from biojepac.eval.evaluate import evaluate
from biojepac.models.baselines import MODELS, BaselineConfig
from biojepac.predict import predict_cells

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CACHE = REPO / "benchmarks" / "cache"
FIXTURE = REPO.parent / "shared" / "data" / "norman19_mcfaline23_devel.h5ad"
COLUMNS = [("vcc_score", "VCC score"), ("overlap_at_N", "DES"), ("discrimination_score_l1", "PDS"), ("mae", "MAE"),
           ("pearson_delta_top20", "Pearson Δ top20"), ("r2_top50", "R² top50"), ("pds_cosine", "cos-PDS")]


def get_tasks(quick: bool) -> list[dict]:
    """(name, screen, split, feature specs) for each task."""
    syn = normalize_log1p(make_synthetic_screen(get_screen_preset("tiny" if quick else "demo"), seed=0))
    CACHE.mkdir(parents=True, exist_ok=True)
    net_fpath = CACHE / ("synthetic_network_features_quick.npz" if quick else "synthetic_network_features.npz")
    np.savez(net_fpath, genes=np.asarray(syn.var_names, dtype=str), vectors=syn.varm["network_features"])
    syn_feats = [f"file:{net_fpath}", "expr"]
    tasks = [
        dict(name="synthetic: unseen perturbations (ctx0)", screen=syn, feats=syn_feats,
             split=splits.make_unseen_perturbation_split(syn, context="ctx0", seed=0)),
        dict(name="synthetic: few-shot context (ctx1, k=4)" if quick else "synthetic: few-shot context (ctx2, k=10)",
             screen=syn, feats=syn_feats,
             split=splits.make_fewshot_context_split(syn, "ctx1" if quick else "ctx2", k=4 if quick else 10, seed=0)),
    ]
    if not FIXTURE.is_file():
        print(f"skipping real-data tasks: {FIXTURE} not found")
        return tasks
    real = load_norman_mcfaline(FIXTURE)
    norman = real[real.obs["dataset"] == "norman19"].copy()
    singles = norman[~norman.obs[schema.PERT_COL].str.contains(r"\+", regex=True)].copy()
    mcf = real[real.obs["dataset"] == "mcfaline23"].copy()
    real_feats = ["go", "expr"]
    tasks += [
        dict(name="Norman19: unseen single perturbations", screen=singles, feats=real_feats,
             split=splits.make_unseen_perturbation_split(singles, context="k562", fractions=(0.6, 0.1, 0.3), seed=0)),
        dict(name="Norman19: combinations from singles", screen=norman, feats=real_feats,
             split=splits.make_combination_split(norman, seed=0, gene_fractions=(1.0, 0.0, 0.0), seen2_test_fraction=1.0)),
        dict(name="McFaline23: cell line U87MG held out", screen=mcf, feats=real_feats,
             split=splits.make_zeroshot_context_split(mcf, "U87MG", seed=0)),
    ]
    return tasks


def get_models(feats: list[str]) -> list[tuple[str, str, BaselineConfig]]:
    """(row label, kind, config). Feature models fall back to the cell mean for genes without features,
    explicitly; the fallback count is reported next to each row."""
    rows = [(k, k, BaselineConfig(combo_fallback="cell-mean")) for k in
            ("control-mean", "cell-mean", "crispr-mean", "context-transfer", "additive")]
    rows.append(("context-transfer [lstsq]", "context-transfer", BaselineConfig(transfer_scale="lstsq")))
    for kind in ("linear", "ridge", "knn"):
        for f in feats:
            short = "network" if f.startswith("file:") else f
            rows.append((f"{kind} [{short}]", kind, BaselineConfig(features=f, feature_fallback="cell-mean")))
    return rows


def run_task(task: dict, n_boot: int, seed: int) -> list[dict]:
    screen, split = task["screen"], task["split"]
    masks = splits.split_masks(screen, split)
    train = screen[masks["train"]].copy()
    test_items = pd.DataFrame(split.test, columns=[schema.CONTEXT_COL, schema.PERT_COL])
    out = []
    for label, kind, cfg in get_models(task["feats"]):
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                model = MODELS[kind](cfg).fit(train)
            except InputError as err:  # e.g. no training gene has features: a row saying why, not a crash
                print(f"  {label:<24} skipped: {err}")
                out.append({"task": task["name"], "split": split.name, "model": label, "skipped": str(err)})
                continue
            fit_s = time.perf_counter() - t0
            aggs = []
            for ctx, items in test_items.groupby(schema.CONTEXT_COL):
                perts = items[schema.PERT_COL].tolist()
                real, pred, base = make_pair(screen, train, model, ctx, perts, seed)
                base_kw = {"train": base} if base is not None else {"baseline": predict_cells(
                    MODELS["cell-mean"]().fit(train), train, requests_of(real, perts), ctx, seed)}
                aggs.append((len(items), evaluate(pred, real, profile="all", n_boot=n_boot, seed=seed,
                                                  **base_kw)["aggregates"]))
        n_fallback = sum("predicting the cell mean" in str(w.message) for w in caught)
        agg = aggs[0][1] if len(aggs) == 1 else merge(aggs)
        out.append({"task": task["name"], "split": split.name, "model": label, "fit_s": fit_s,
                    "total_s": time.perf_counter() - t0, "n_test": len(test_items), "n_feature_fallback": n_fallback,
                    **{k: agg.get(k) for k, _ in COLUMNS}, "ci95": {k: agg["ci95"].get(k) for k, _ in COLUMNS},
                    "baseline": agg.get("baseline", {}), "normalised": agg.get("normalised", {})})
        print(f"  {label:<24} score {fmt(out[-1], 'vcc_score')}  DES {fmt(out[-1], 'overlap_at_N')}  "
              f"PDS {fmt(out[-1], 'discrimination_score_l1')}  MAE {fmt(out[-1], 'mae')}  ({out[-1]['total_s']:.1f} s)")
    return out


def make_pair(screen, train, model, ctx: str, perts: list[str], seed: int):
    """(real test cells + context controls, predicted cells + the same controls, baseline training cells)."""
    obs = screen.obs
    is_ctrl = (obs[schema.PERT_COL] == schema.CONTROL).to_numpy()
    in_ctx = (obs[schema.CONTEXT_COL] == ctx).to_numpy()
    real = screen[in_ctx & (is_ctrl | obs[schema.PERT_COL].isin(perts).to_numpy())].copy()
    pred = predict_cells(model, train, requests_of(real, perts), ctx, seed)
    train_ctx = train[(train.obs[schema.CONTEXT_COL] == ctx).to_numpy()]
    has_perts = (train_ctx.obs[schema.PERT_COL] != schema.CONTROL).any()
    return real, pred, train_ctx.copy() if has_perts else None


def requests_of(real, perts: list[str]) -> pd.DataFrame:
    """target_gene, n_cells: as many predicted cells as real ones."""
    counts = real.obs[schema.PERT_COL].value_counts()
    return pd.DataFrame({schema.PERT_COL: perts, "n_cells": [int(counts[p]) for p in perts]})


def merge(aggs: list[tuple[int, dict]]) -> dict:
    """Perturbation-weighted mean of several contexts' aggregates (CIs of the largest part)."""
    w = np.asarray([n for n, _ in aggs], float)
    keys = [k for k, _ in COLUMNS]
    out = {k: float(np.average([a.get(k, np.nan) for _, a in aggs], weights=w)) for k in keys}
    out["ci95"] = max(aggs, key=lambda x: x[0])[1]["ci95"]
    return out


def fmt(row: dict, key: str) -> str:
    v, ci = row.get(key), row["ci95"].get(key)
    if v is None or not np.isfinite(v):
        return "n/a"
    return f"{v:.3f}" if not ci else f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def write_results(rows: list[dict], meta: dict, quick: bool) -> pathlib.Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "baselines_quick" if quick else "baselines"
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=float))
    lines = ["# Baseline leaderboard", "",
             f"Written by `benchmarks/bench_baselines.py` on {meta['date']} (git {meta['git']}, {meta['host']}; "
             f"{meta['seconds']:.0f} s in all). Mean over test perturbations, with bootstrap 95% CIs over "
             f"perturbations ({meta['n_boot']} resamples). VCC score = cell-eval's score ×100 against the cell-mean "
             "baseline built from the training cells of the context (for a held-out cell line: our cell-mean prediction; "
             "scores are clipped at 0, so the cell-mean row scores about 0). DES = overlap_at_N, PDS = discrimination_score_l1 (higher better), MAE (lower better), "
             "cos-PDS = the calibrated cosine PDS. `fallback` = test perturbations a feature model could not embed "
             "and explicitly predicted with the cell mean.", ""]
    for task, group in pd.DataFrame(rows).groupby("task", sort=False):
        lines += [f"## {task}", "", f"split `{group['split'].iloc[0]}`, {group['n_test'].iloc[0]:.0f} test perturbations", "",
                  "| model | " + " | ".join(h for _, h in COLUMNS) + " | fallback | fit s |",
                  "|---" * (len(COLUMNS) + 3) + "|"]
        records = group.to_dict("records")
        skipped = [r for r in records if isinstance(r.get("skipped"), str)]
        ran = [r for r in records if not isinstance(r.get("skipped"), str)]
        for row in sorted(ran, key=lambda r: -np.nan_to_num(r["vcc_score"], nan=-1e9)):
            cells = [fmt(row, k) for k, _ in COLUMNS]
            lines.append(f"| {row['model']} | " + " | ".join(cells) + f" | {row['n_feature_fallback']:.0f} | {row['fit_s']:.2f} |")
        lines += [""] + [f"- not run: {r['model']}: {r['skipped']}" for r in skipped] + ([""] if skipped else [])
    fpath = RESULTS / f"{stem}.md"
    fpath.write_text("\n".join(lines))
    return fpath


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny synthetic screen, few bootstrap resamples")
    parser.add_argument("--n-boot", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    t0 = time.perf_counter()
    rows = []
    for task in get_tasks(args.quick):
        print(f"== {task['name']} ({task['split'].name}: {len(task['split'].train)} train / {len(task['split'].test)} test items)")
        rows += run_task(task, 50 if args.quick else args.n_boot, args.seed)
    git = git_commit()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "git": git, "host": platform.node(),
            "seconds": time.perf_counter() - t0, "n_boot": 50 if args.quick else args.n_boot, "seed": args.seed,
            "quick": args.quick}
    print(f"wrote {write_results(rows, meta, args.quick)}")


if __name__ == "__main__":
    main()
