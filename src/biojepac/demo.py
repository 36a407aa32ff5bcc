"""`biojepac demo`: the whole pipeline on a generated synthetic screen, end to end.

data (synthetic counts with a known causal truth) -> normalise -> leak-checked unseen-perturbation split
-> fit models (control mean, cell mean, linear, STATE-style transition, small BioJEPAC) -> predict cells
-> evaluate each (VCC profile scored against the cell-mean baseline, report and calibrated metrics)
-> one summary report comparing the models, plus each model's own report.

Every file the demo writes stays in `out_dpath`, so each step can be re-run by hand with the CLI.
"""

import dataclasses
import json
import pathlib
import time
import typing

import anndata as ad
import numpy as np
import pandas as pd

from biojepac.data import schema, splits, synthetic
from biojepac.data.normalize import normalize_log1p
from biojepac.data.pairing import pseudobulk_deltas
from biojepac.eval.evaluate import evaluate
from biojepac.io import write_h5ad_atomic, write_text_atomic
from biojepac.models import registry
from biojepac.models.base import Preset
from biojepac.predict import predict_cells
from biojepac.train.run_folder import open_run

ModelName = typing.Literal["control-mean", "cell-mean", "linear", "knn", "state", "biojepac"]


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    out_dpath: pathlib.Path = pathlib.Path("demo_out")
    """Folder for every file the demo writes (screen, split, models, predictions, reports)."""
    screen_preset: synthetic.ScreenPreset = "demo"
    """Synthetic screen size: tiny | demo | realistic (see `biojepac data synth --help`)."""
    models: tuple[ModelName, ...] = ("control-mean", "cell-mean", "linear", "knn", "state", "biojepac")
    """Models to fit and compare."""
    features: str = "varm:network_features"
    """Perturbation features for linear/knn/state/biojepac: the synthetic screen's per-gene network features."""
    model_preset: Preset = "tiny"
    """Preset of the neural models (state, biojepac): tiny | cpu-small | paper."""
    steps_scale: float = 1.0
    """Multiply the neural models' training steps (quick runs: 0.1)."""
    seed: int = 0
    """Seeds the screen, the split, control sampling and every model."""
    n_boot: int = 200
    """Bootstrap resamples for confidence intervals."""
    overwrite: bool = False
    """Start the training runs in OUT_DPATH/runs afresh (default: resume runs made with the same settings,
    refuse runs made with others)."""


def run_demo(cfg: DemoConfig) -> pathlib.Path:
    out = cfg.out_dpath
    out.mkdir(parents=True, exist_ok=True)
    # Before any work: the demo's training runs resume only with the settings they were made with.
    open_run(out / "runs", "demo", {k: getattr(cfg, k) for k in RUN_SETTINGS}, cfg.overwrite)
    t0 = time.perf_counter()
    print(f"[1/5] synthetic screen ({cfg.screen_preset})")
    screen = synthetic.make_synthetic_screen(synthetic.get_screen_preset(cfg.screen_preset), cfg.seed)
    write_h5ad_atomic(screen, out / "screen_counts.h5ad")
    target_sum = screen.uns[schema.UNS_KEY]["truth"].get("target_sum", 1e4)
    norm = normalize_log1p(screen, target=float(target_sum))

    context = sorted(norm.obs[schema.CONTEXT_COL].unique())[0]
    split = splits.make_unseen_perturbation_split(norm, context=context, seed=cfg.seed)
    splits.assert_no_leak(split)
    splits.save_split(split, out / "split.json")
    masks = splits.split_masks(norm, split)
    train = norm[masks["train"]].copy()
    write_h5ad_atomic(train, out / "train.h5ad")
    test_perts = sorted(p for c, p in split.test if c == context)
    real = get_real(norm, context, test_perts)
    write_h5ad_atomic(real, out / "real.h5ad")
    print(f"      {norm.n_obs} cells x {norm.n_vars} genes; context {context!r}: "
          f"{len(split.train)} train / {len(split.test)} test perturbations")

    requests = real.obs[schema.PERT_COL].astype(str).value_counts()
    requests = pd.DataFrame({"target_gene": test_perts, "n_cells": [int(requests[p]) for p in test_perts]})
    rows = []
    for i, name in enumerate(cfg.models):
        print(f"[2/5] fit {name}")
        t_fit = time.perf_counter()
        model, _ = registry.build(name, features=cfg.features, preset=cfg.model_preset, seed=cfg.seed,
                                  run_dpath=cfg.out_dpath / "runs" / name, steps_scale=cfg.steps_scale)
        model.fit(train)
        fit_s = time.perf_counter() - t_fit
        print(f"[3/5] predict {name}")
        pred = predict_cells(model, train, requests, context, cfg.seed)
        pred.uns[schema.UNS_KEY] = {"model": name, "split": split.name, "features": cfg.features}
        pred_fpath = out / "predictions" / f"{name}.h5ad"
        pred_fpath.parent.mkdir(exist_ok=True)
        write_h5ad_atomic(pred, pred_fpath)
        print(f"[4/5] evaluate {name}")
        res = evaluate(pred, real, train=train, profile="all", out_dpath=out / "reports" / name,
                       n_boot=cfg.n_boot, seed=cfg.seed, plots=True)
        agg = res["aggregates"]
        rows.append({"model": name, "fit_s": fit_s, **headline(agg), **truth_agreement(pred, norm, context, test_perts),
                     "report": str(pathlib.Path("reports") / name / "report.md")})
    print("[5/5] summary")
    fpath = write_summary(out, rows, cfg, split, time.perf_counter() - t0)
    print(f"\nreport: {fpath.resolve()}")
    return fpath


RUN_SETTINGS = ("seed", "screen_preset", "model_preset", "steps_scale", "features")
"""The demo settings its training runs depend on (the screen is a function of preset and seed)."""


def get_real(norm: ad.AnnData, context: str, test_perts: list[str]) -> ad.AnnData:
    """The held-out cells of the test perturbations plus the context's controls: the ground truth file."""
    obs = norm.obs
    keep = (obs[schema.CONTEXT_COL] == context).to_numpy() & obs[schema.PERT_COL].isin(
        test_perts + [schema.CONTROL]).to_numpy()
    real = norm[keep].copy()
    real.obs[schema.PERT_COL] = real.obs[schema.PERT_COL].astype(str).astype("category")
    return real


HEADLINE = {
    "vcc_score": "vcc_score",
    "DES": "overlap_at_N",
    "PDS": "discrimination_score_l1",
    "MAE": "mae",
    "pearson_delta": "pearson_delta",
    "pearson_delta_top20": "pearson_delta_top20",
    "mse": "mse",
}


def headline(agg: dict) -> dict:
    """The few numbers the summary shows, looked up in the aggregate JSON (NaN where a metric is absent)."""
    flat = {}
    for label, key in HEADLINE.items():
        value = agg.get(key)
        if isinstance(value, dict):
            value = value.get("mean", value.get("value"))
        flat[label] = float(value) if value is not None else float("nan")
    return flat


def truth_agreement(pred: ad.AnnData, norm: ad.AnnData, context: str, test_perts: list[str]) -> dict:
    """Pearson r between each predicted pseudobulk delta and the generator's true delta (mean over perts)."""
    truth = norm.uns[schema.UNS_KEY]["truth"]
    key = pd.Series(np.arange(len(truth["target_gene"])),
                    index=pd.MultiIndex.from_arrays([list(map(str, truth["context"])), list(map(str, truth["target_gene"]))]))
    groups, delta = pseudobulk_deltas(pred)
    rs = []
    for (ctx, pert), d in zip(zip(groups[schema.CONTEXT_COL].astype(str), groups[schema.PERT_COL].astype(str)), delta):
        if pert in test_perts and ctx == context and (ctx, pert) in key.index:
            t = np.asarray(truth["delta"][key[(ctx, pert)]])
            rs.append(np.corrcoef(d, t)[0, 1] if d.std() > 0 and t.std() > 0 else 0.0)
    return {"r_truth": float(np.mean(rs)) if rs else float("nan")}


def write_summary(out: pathlib.Path, rows: list[dict], cfg: DemoConfig, split, seconds: float) -> pathlib.Path:
    table = pd.DataFrame(rows).set_index("model")
    cols = ["vcc_score", "DES", "PDS", "MAE", "pearson_delta", "pearson_delta_top20", "mse", "r_truth", "fit_s"]
    lines = [
        "# BioJEPAC demo report",
        "",
        f"Synthetic screen preset `{cfg.screen_preset}`, seed {cfg.seed}; split `{split.name}` "
        f"({len(split.train)} train / {len(split.val)} val / {len(split.test)} test perturbations). "
        f"Total time {seconds:.0f} s.",
        "",
        "`vcc_score` is the VCC 2025 score (x100) against the cell-mean baseline built from the training cells; "
        "DES, PDS and MAE are the raw metrics. `r_truth` is the mean Pearson r between each predicted "
        "pseudobulk delta and the generator's true expected delta (1 = perfect).",
        "",
        "| model | " + " | ".join(cols) + " | report |",
        "|---|" + "---|" * (len(cols) + 1),
    ]
    for name, row in table.iterrows():
        cells = [f"{row[c]:.4f}" if c != "fit_s" else f"{row[c]:.1f}" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | [{name}]({row['report']}) |")
    text = "\n".join(lines) + "\n"
    fpath = write_text_atomic(out / "report.md", text)
    write_text_atomic(out / "summary.json", json.dumps(rows, indent=1))
    print(text)
    return fpath
