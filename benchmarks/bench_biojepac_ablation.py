"""BioJEPAC predict-stage ablation (issue 13): each design choice switched off in turn, over seeds, on the
two synthetic bench tasks, through the same code path as `biojepac bench` (registry.build -> fit ->
predict.predict_cells -> bench.grid.score against the cell-mean baseline).

    .venv/bin/python benchmarks/bench_biojepac_ablation.py [--seeds 0 1 2] [--tasks ...] [--variants ...]

Writes benchmarks/results/biojepac_ablation.md and .json. Stages a variant does not change (pretraining,
decoding, composing) are copied from the seed's first variant's run instead of retrained, which is exact: the
stage checkpoints are what a rerun would load.
"""

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
import time

import anndata as ad
import numpy as np

from biojepac.bench import grid, tasks as tasklib
from biojepac.data import schema
from biojepac.io import write_h5ad_atomic, write_text_atomic
from biojepac.models import registry
from biojepac.predict import predict_cells

RESULTS_DPATH = pathlib.Path(__file__).resolve().parent / "results"
VARIANTS = {
    # name: (config overrides {section: {field: value}}, stages shared with `full`)
    "full": ({}, ("pretrain", "decode", "compose")),
    "prior only (no residual)": ({"predict": {"residual": False}}, ("pretrain", "decode", "compose")),
    "residual only (no prior)": ({"predict": {"prior": "none"}}, ("pretrain", "decode", "compose")),
    "no expression loss": ({"predict": {"expr_weight": 0.0}}, ("pretrain", "decode", "compose")),
    "no gene x action interaction or target flag": ({"predict": {"interaction": False}}, ("pretrain", "decode", "compose")),
    "no context token": ({"predict": {"context_token": False}}, ("pretrain", "decode", "compose")),
    "prior only, λ by squared error (old)": ({"predict": {"residual": False, "prior_lambda_by": "mse"}},
                                             ("pretrain", "decode", "compose")),
    "prior only, always transfers (old)": ({"predict": {"residual": False, "prior_select_transfer": False}},
                                           ("pretrain", "decode", "compose")),
    "InfoNCE composer (old)": ({"compose": {"objective": "infonce"}}, ("pretrain", "decode")),
    "EMA uncapped (old: 0.996)": ({"pretrain": {"ema_init_left": 1.0}}, ()),
}

VARIANT_NAMES = list(VARIANTS)


def variant_model(name: str, task, seed: int, run_dpath: pathlib.Path):
    model, _ = registry.build("biojepac", features=task.features, preset="tiny", seed=seed, run_dpath=run_dpath)
    overrides, _ = VARIANTS[name]
    cfg = model.cfg
    for section, fields in overrides.items():
        cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **fields)})
    model.cfg = cfg
    return model


def run_one(task, name: str, seed: int, work: pathlib.Path, base_fpath: pathlib.Path, first: str) -> dict:
    """`first`: the variant this seed ran first, with every stage; the stages `name` shares are copied from it."""
    run_dpath = work / f"{task.name}-{seed}-{VARIANT_NAMES.index(name)}"
    _, shared = VARIANTS[name]
    for stage in shared if name != first else ():  # identical stages: the first run's checkpoints
        shutil.copytree(work / f"{task.name}-{seed}-{VARIANT_NAMES.index(first)}" / stage, run_dpath / stage, dirs_exist_ok=True)
    masks = tasklib.fold_masks(task)
    train = task.adata[masks["train"]].copy()
    model = variant_model(name, task, seed, run_dpath)
    t0 = time.perf_counter()
    model.fit(train)
    fit_s = time.perf_counter() - t0
    req = tasklib.requests(task)
    parts = [predict_cells(model, train, r[["target_gene", "n_cells"]].reset_index(drop=True), ctx, seed)
             for ctx, r in req.groupby("context")]
    pred = ad.concat(parts) if len(parts) > 1 else parts[0]
    pred.obs_names_make_unique()
    pred_fpath = write_h5ad_atomic(pred, run_dpath / "pred.h5ad")
    cfg = grid.BenchConfig(n_boot=200, seed=0)
    _, summary = grid.score(task, pred_fpath, str(base_fpath), cfg)
    vals = {m: v for m, v, _, _ in summary}
    return {"task": task.name, "variant": name, "seed": seed, "vcc_score": vals.get("vcc_score"),
            "pearson_delta": vals.get("pearson_delta"), "train_fit_r": train_fit_r(model, train),
            "residual_kept": bool(model.use_residual), "fit_s": round(fit_s, 1)}


def train_fit_r(model, train) -> float:
    """Mean Pearson r between predicted and observed pseudobulk deltas of the training perturbations."""
    x = np.asarray(train.X.toarray() if hasattr(train.X, "toarray") else train.X, np.float32)
    obs = train.obs
    rs = []
    for ctx in sorted(obs[schema.CONTEXT_COL].astype(str).unique()):
        in_ctx = (obs[schema.CONTEXT_COL].astype(str) == ctx).to_numpy()
        labels = obs[schema.PERT_COL].astype(str).to_numpy()
        ctrl = x[in_ctx & (labels == schema.CONTROL)]
        for p in sorted(set(labels[in_ctx]) - {schema.CONTROL}):
            true = x[in_ctx & (labels == p)].mean(0) - ctrl.mean(0)
            pred = model.predict(ctrl, p, ctx, 0).mean(0) - ctrl.mean(0)
            rs.append(np.corrcoef(true, pred)[0, 1])
    return float(np.mean(rs))


def baseline(task, work: pathlib.Path) -> pathlib.Path:
    """The cell-mean prediction every VCC score is scaled against (as `biojepac bench` makes it)."""
    masks = tasklib.fold_masks(task)
    train = task.adata[masks["train"]].copy()
    model, _ = registry.build("cell-mean", features=task.features, fallback="cell-mean")
    model.fit(train)
    req = tasklib.requests(task)
    parts = [predict_cells(model, train, r[["target_gene", "n_cells"]].reset_index(drop=True), ctx, 0)
             for ctx, r in req.groupby("context")]
    pred = ad.concat(parts) if len(parts) > 1 else parts[0]
    pred.obs_names_make_unique()
    return write_h5ad_atomic(pred, work / f"{task.name}-cell-mean.h5ad")


def table(rows: list[dict]) -> str:
    lines = ["| task | variant | VCC score: mean [min, max] over seeds | VCC 95% CI | Pearson Δ | Pearson Δ 95% CI | "
             "train-fit r | residual kept | fit s |", "|---|---|---|---|---|---|---|---|---|"]
    for task in dict.fromkeys(r["task"] for r in rows):
        for name in VARIANTS:
            rs = [r for r in rows if r["task"] == task and r["variant"] == name]
            if not rs:
                continue
            fmt = lambda k: f"{np.mean([r[k] for r in rs]):.3f} [{min(r[k] for r in rs):.3f}, {max(r[k] for r in rs):.3f}]"
            kept = sum(r["residual_kept"] for r in rs)
            lines.append(f"| {task} | {name} | {fmt('vcc_score')} | {ci(rs, 'vcc_score')} | {fmt('pearson_delta')} | "
                         f"{ci(rs, 'pearson_delta')} | {fmt('train_fit_r')} | {kept}/{len(rs)} | "
                         f"{np.mean([r['fit_s'] for r in rs]):.0f} |")
    return "\n".join(lines) + "\n"


def ci(rows: list[dict], key: str) -> str:
    """95% t-interval of the mean over seeds ("–" with one seed)."""
    vals = np.asarray([r[key] for r in rows], float)
    if len(vals) < 2:
        return "–"
    half = T975[len(vals) - 1] * vals.std(ddof=1) / np.sqrt(len(vals))
    return f"[{vals.mean() - half:.3f}, {vals.mean() + half:.3f}]"


T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}
"""Two-sided 95% Student t quantiles by degrees of freedom."""


def write(rows: list[dict], args, t0: float, load0: float) -> str:
    if args.append and (RESULTS_DPATH / "biojepac_ablation.json").exists():  # another run's rows, ours replacing equal keys
        key = lambda r: (r["task"], r["variant"], r["seed"])
        old = json.loads((RESULTS_DPATH / "biojepac_ablation.json").read_text())
        rows = list({**{key(r): r for r in old}, **{key(r): r for r in rows}}.values())
    seeds = sorted({r["seed"] for r in rows})
    text = (f"# BioJEPAC predict-stage ablation\n\nWritten by `benchmarks/bench_biojepac_ablation.py` "
            f"({time.perf_counter() - t0:.0f} s, 2 shared CPU cores, load average {load0:.1f} at the start and "
            f"{os.getloadavg()[0]:.1f} at the end: fit times carry that contention). Preset `tiny`, bench task seed 0, model seeds "
            f"{seeds}. VCC score x100 against the cell-mean baseline (clipped at 0, as cell-eval); Pearson Δ on "
            "held-out perturbations; train-fit r: predicted vs observed pseudobulk deltas of the training perturbations. "
            "`full` = linear latent prior (ridge λ by leave-one-out correlation, B = 0 unless it beats the mean shift out of sample by one standard error; transfer from other contexts only where "
            "it beat the context's mean shift on the training contexts) + residual predictor (kept only when held-out "
            "training perturbations improve by more than one standard error), response-pretrained composer, capped EMA, expression loss. VCC 95% CI and "
            "Pearson Δ 95% CI: t-interval of the mean over seeds (the tasks test several contexts, so there is no single "
            "bootstrap CI over perturbations). Variants that share stages with the first variant listed reuse its checkpoints. The pre-redesign model (VICReg + token mask, "
            "paired cells) is no longer in the code; its bench rows were VCC 1.7 (synthetic-unseen-pert) and 1.6 "
            "(synthetic-fewshot-ctx), in the leaderboard before this change.\n\n" + table(rows))
    write_text_atomic(RESULTS_DPATH / "biojepac_ablation.md", text)
    write_text_atomic(RESULTS_DPATH / "biojepac_ablation.json", json.dumps(rows, indent=1))
    return text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tasks", nargs="+", default=["synthetic-unseen-pert", "synthetic-fewshot-ctx"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--append", action="store_true", help="keep the rows already in biojepac_ablation.json")
    args = ap.parse_args()
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bj-ablation-") as tmp:
        work = pathlib.Path(tmp)
        tasks = [tasklib.get_task(name, pathlib.Path("../shared/data"), seed=0) for name in args.tasks]
        bases = [baseline(task, work) for task in tasks]
        for seed in args.seeds:  # seeds outermost: a stopped ablation has whole seeds of every task
            for task, base_fpath in zip(tasks, bases):
                for name in args.variants:  # the first one trains every stage; later ones reuse what they share
                    rows.append(run_one(task, name, seed, work, base_fpath, args.variants[0]))
                    print(json.dumps(rows[-1]), flush=True)
                    write(rows, args, t0, load0)  # after every run, so a stopped ablation keeps what it measured
    text = write(rows, args, t0, load0)
    print(text)


if __name__ == "__main__":
    main()
