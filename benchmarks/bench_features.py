"""Perturbation feature specs x benchmark tasks for the linear and ridge baselines, with bootstrap CIs.

For each task of `biojepac.bench.tasks` (synthetic-unseen-pert, synthetic-fewshot-ctx, norman-unseen-single,
norman-combos, mcfaline-heldout-line) and each feature spec (onehot, expr, go, expr+go, expr|go; `varm`, the
gene embedding a screen ships, here the synthetic screen's network features; `screen:` another screen's
responses on the real tasks; and the default, `DEFAULT_FEATURES`), `linear` (Ahlmann-Eltze et al.
2025, `models.baselines.Linear`) and `ridge` are fitted on the task's training cells and predict every
test item from that context's real controls (`predict.predict_cells`, as `biojepac predict` does). Every
feature model uses `feature_fallback="cell-mean"`, so a spec that cannot embed a test perturbation still
gets a row; `fallback` counts those perturbations (such a row is partly the cell-mean baseline). On
norman-combos the `additive` baseline (sum of the measured singles' deltas) is scored too.

Scores: `eval.evaluate` per context (VCC profile against cell-eval's cell-mean baseline from the context's
training cells, or our cell-mean prediction for a held-out line, as bench_baselines.py does; report profile
for Pearson Δ), then pooled over the task's perturbations with 95% bootstrap CIs.

"linear (before)" is the linear baseline as it was before issue 14 (commit 39600e7: G = principal axes of the
training residual deltas, ridge from centred features to G's scores) with the leaderboard's features
(`task.features`), re-implemented below so the comparison runs on the same harness.

Run: `nice .venv/bin/python benchmarks/bench_features.py [--n-boot 200]`.
Writes benchmarks/results/features.{md,json}.
"""

import argparse
import json
import os
import pathlib
import platform
import time
import warnings

import numpy as np
import pandas as pd

from biojepac.bench import tasks as tasklib
from biojepac.bench.provenance import git_commit
from biojepac.data import schema
from biojepac.errors import InputError
from biojepac.eval.evaluate import _aggregate, evaluate
from biojepac.features import DEFAULT_FEATURES
from biojepac.features.base import GeneTable
from biojepac.models.baselines import MODELS, BaselineConfig, MeanShift, _ridge_solve
from biojepac.predict import predict_cells

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CACHE = REPO / "benchmarks" / "cache" / "features"
DATA = REPO.parent / "shared" / "data"
SPECS = ("onehot", "expr", "go", "expr+go", "expr|go")
KEYS = ("vcc_score", "pearson_delta", "overlap_at_N", "discrimination_score_l1", "mae")


class LinearBefore(MeanShift):
    """The linear baseline before issue 14 (commit 39600e7), for the before/after comparison."""

    kind = "linear"

    def _fit_extra(self, train):
        p_nl = self._setup_features(train)
        y_ng = self._residuals()[self.s["fit_rows"]]
        _, _, vt = np.linalg.svd(y_ng, full_matrices=False)
        g_gk = vt[: self.cfg.n_components].T
        self.s.update(g_gk=g_gk, w_lk=_ridge_solve(p_nl - self.s["p_mean"], y_ng @ g_gk, self.cfg.ridge))

    def delta(self, target_gene, context):
        phi = self._phi_centred(target_gene)
        base = self._base(context)
        return base if phi is None else base + self.s["g_gk"] @ (phi @ self.s["w_lk"])


def other_screen(task: tasklib.Task) -> pathlib.Path | None:
    """A screen whose responses may serve as features: McFaline23 for Norman; the training lines for McFaline."""
    CACHE.mkdir(parents=True, exist_ok=True)
    if task.name.startswith("norman"):
        from biojepac.data.recipes import load_norman_mcfaline

        full = load_norman_mcfaline(DATA / "norman19_mcfaline23_devel.h5ad")
        src, fpath = full[(full.obs["dataset"] == "mcfaline23").to_numpy()].copy(), CACHE / "mcfaline23.h5ad"
    elif task.name == "mcfaline-heldout-line":
        masks = tasklib.fold_masks(task)
        src, fpath = task.adata[masks["train"]].copy(), CACHE / "mcfaline23_training_lines.h5ad"
    else:
        return None
    src.obs = src.obs[[schema.PERT_COL, schema.CONTEXT_COL, schema.BATCH_COL]].astype(str)
    src.uns = {}
    src.write_h5ad(fpath)
    return fpath


def get_rows(task: tasklib.Task) -> list[tuple[str, str, str, object]]:
    """(model label, kind, spec label, features: a spec string or a provider)."""
    specs = [(s, s) for s in SPECS]
    if task.name.startswith("synthetic"):
        specs.append(("varm", "varm"))
    else:
        other = other_screen(task)
        specs += [("screen", f"screen:{other}"), ("screen|go", f"screen:{other}|go")]
    specs.append((DEFAULT_FEATURES, DEFAULT_FEATURES))
    rows = [("linear (before)", "before", "task features", task.features)]
    rows += [(kind, kind, label, spec) for label, spec in specs for kind in ("linear", "ridge")]
    rows.append(("linear", "linear", "task features", task.features))
    if task.name == "norman-combos":
        rows.append(("additive", "additive", "none (measured singles)", None))
    return rows


def score_task(task: tasklib.Task, n_boot: int, seed: int) -> list[dict]:
    masks = tasklib.fold_masks(task)
    train = task.adata[masks["train"]].copy()
    test = pd.DataFrame(task.split.test, columns=[schema.CONTEXT_COL, schema.PERT_COL])
    out = []
    for label, kind, spec_label, feats in get_rows(task):
        t0 = time.perf_counter()
        cfg = BaselineConfig(features=feats if isinstance(feats, str) else DEFAULT_FEATURES, feature_fallback="cell-mean",
                             combo_fallback="cell-mean")
        provider = feats if isinstance(feats, GeneTable) else None
        model = LinearBefore(cfg, provider) if kind == "before" else MODELS[kind](cfg, provider)
        row = {"task": task.name, "model": label, "features": spec_label, "n_test": len(test)}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                model.fit(train)
            except InputError as err:  # e.g. no training perturbation has features: a row saying why
                out.append({**row, "skipped": str(err).replace(str(REPO) + "/", "")})
                print(f"  {label:<16} [{spec_label}] not run: {err}")
                continue
            row["fit_s"] = time.perf_counter() - t0
            user, base = {}, {}
            for ctx, items in test.groupby(schema.CONTEXT_COL):
                per = score_context(task, train, model, str(ctx), items[schema.PERT_COL].tolist(), n_boot, seed)
                for k in KEYS[1:]:
                    user.setdefault(k, []).append(per[k].to_numpy())
                for k in KEYS[2:]:
                    base.setdefault(k, []).append(per[f"baseline_{k}"].to_numpy())
        row["n_fallback"] = sum("predicting the cell mean" in str(w.message) for w in caught)
        agg = _aggregate({k: np.concatenate(v) for k, v in user.items()},
                         {k: np.concatenate(v) for k, v in base.items()}, None, n_boot, seed)
        row |= {k: agg[k] for k in KEYS} | {"ci95": {k: agg["ci95"][k] for k in KEYS}}
        row["seconds"] = time.perf_counter() - t0
        model_features = getattr(model, "features", None)
        row["feature_source"] = getattr(model_features, "source", "")
        out.append(row)
        print(f"  {label:<16} [{spec_label:<13}] VCC {fmt(row, 'vcc_score', 1)}  Pearson Δ {fmt(row, 'pearson_delta')}  "
              f"fallback {row['n_fallback']}  ({row['seconds']:.1f} s)")
    return out


def score_context(task, train, model, ctx: str, perts: list[str], n_boot: int, seed: int) -> pd.DataFrame:
    """Per-perturbation metrics (and the cell-mean baseline's) of `model` on the test perturbations of `ctx`."""
    obs = task.adata.obs
    is_ctrl = (obs[schema.PERT_COL] == schema.CONTROL).to_numpy()
    in_ctx = (obs[schema.CONTEXT_COL] == ctx).to_numpy()
    real = task.adata[in_ctx & (is_ctrl | obs[schema.PERT_COL].isin(perts).to_numpy())].copy()
    counts = real.obs[schema.PERT_COL].value_counts()
    req = pd.DataFrame({"target_gene": perts, "n_cells": [int(counts[p]) for p in perts]})
    pred = predict_cells(model, train, req, ctx, seed)
    train_ctx = train[(train.obs[schema.CONTEXT_COL] == ctx).to_numpy()]
    if (train_ctx.obs[schema.PERT_COL] != schema.CONTROL).any():
        base_kw = {"train": train_ctx.copy()}
    else:  # a held-out line: no training perturbations there, so our cell-mean prediction is the baseline
        base_kw = {"baseline": predict_cells(MODELS["cell-mean"]().fit(train), train, req, ctx, seed)}
    vcc = evaluate(pred, real, profile="vcc", n_boot=1, seed=seed, plots=False, **base_kw)["per_perturbation"]
    rep = evaluate(pred, real, profile="report", n_boot=1, seed=seed, plots=False)["per_perturbation"]
    return vcc.join(rep[["pearson_delta"]])


def cell(text: str) -> str:
    """Text for a Markdown table cell: a spec's `|` would end the cell."""
    return str(text).replace("|", "\\|")


def fmt(row: dict, key: str, digits: int = 3) -> str:
    v, ci = row.get(key), row.get("ci95", {}).get(key)
    if v is None or not np.isfinite(v):
        return "n/a"
    return f"{v:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def write_results(rows: list[dict], meta: dict) -> pathlib.Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "features.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=float))
    lines = [
        "# Perturbation features x tasks: linear and ridge baselines", "",
        f"Written by `benchmarks/bench_features.py` on {meta['date']} (git {meta['git']}, {meta['host']}; "
        f"{meta['seconds']:.0f} s in all, {meta['load']}). Mean over the task's test perturbations with 95% bootstrap CIs "
        f"({meta['n_boot']} resamples over perturbations). VCC score = cell-eval's score x100 against the "
        "cell-mean baseline from the context's training cells (a held-out line: our cell-mean prediction), "
        "clipped at 0 per metric; Pearson Δ = Pearson correlation of predicted and real pseudobulk deltas over "
        "all genes. `fallback` = test perturbations (of a double: each single part) the spec could not embed, "
        f"predicted with the cell mean (explicit opt-in for this table). Default spec of every model: `{DEFAULT_FEATURES}`.", "",
    ]
    df = pd.DataFrame(rows)
    for task, group in df.groupby("task", sort=False):
        recs = group.to_dict("records")
        lines += [f"## {task}", "", f"{recs[0]['n_test']} test perturbations", "",
                  "| model | features | VCC score | Pearson Δ | DES | PDS | MAE | fallback | fit s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in recs:
            if isinstance(r.get("skipped"), str):
                lines.append(f"| {r['model']} | {cell(r['features'])} | not run: {cell(r['skipped'])} | | | | | | |")
                continue
            lines.append(f"| {r['model']} | {cell(r['features'])} | {fmt(r, 'vcc_score', 1)} | {fmt(r, 'pearson_delta')} | "
                         f"{r['overlap_at_N']:.3f} | {r['discrimination_score_l1']:.3f} | {r['mae']:.3f} | "
                         f"{r['n_fallback']:.0f} | {r['fit_s']:.2f} |")
        lines.append("")
    lines += summary_lines(df)
    fpath = RESULTS / "features.md"
    fpath.write_text("\n".join(lines) + "\n")
    return fpath


def summary_lines(df: pd.DataFrame) -> list[str]:
    """The before/after line per task, and where the default spec stands among the specs (VCC score, then
    Pearson Δ to break ties such as all-zero scores)."""
    ran = df[df["skipped"].isna()] if "skipped" in df else df
    both = lambda r: f"{fmt(r, 'vcc_score', 1)}; Δr {fmt(r, 'pearson_delta', 2)}"
    out = ["## Summary", "", "VCC score; Δr = Pearson Δ.", "",
           "| task | linear before (task features) | linear now (task features) | "
           f"linear now, default `{cell(DEFAULT_FEATURES)}` | best linear spec | best ridge spec |", "|---|---|---|---|---|---|"]
    notes = []
    for task, g in ran.groupby("task", sort=False):
        def pick(model, feats):
            r = g[(g["model"] == model) & (g["features"] == feats)]
            return r.iloc[0].to_dict() if len(r) else None

        best = {}
        for kind in ("linear", "ridge"):
            k = g[(g["model"] == kind) & (g["features"] != "task features")]
            best[kind] = k.sort_values(["vcc_score", "pearson_delta"], ascending=False).iloc[0].to_dict() if len(k) else None
        cells = [both(r) if r else "n/a" for r in (pick("linear (before)", "task features"), pick("linear", "task features"),
                                                    pick("linear", DEFAULT_FEATURES))]
        cells += [f"{cell(b['features'])}: {both(b)}" if b else "n/a" for b in best.values()]
        out.append(f"| {task} | " + " | ".join(cells) + " |")
        for kind in ("linear", "ridge"):
            if (line := standing(kind, pick(kind, DEFAULT_FEATURES), g)) is not None:
                notes.append(f"- {task}, {kind}: {line}.")
    notes += [
        "", "Reading it:",
        f"- The default `{DEFAULT_FEATURES}` takes the gene embedding a screen ships in `varm` when it has one "
        "(the synthetic screen's noisy causal-graph features, `varm`), else the screen's own expression "
        "embedding `expr`; GO fills in targets that are not measured genes. So on the synthetic tasks it is "
        "`varm` (GO knows no synthetic gene, `expr` covers the same genes) and on the real tasks `expr|go`.",
        "- In synthetic-fewshot-ctx the test perturbations were measured in other contexts, so an identity "
        "(`onehot`) embedding carries their measured effect over; that is `context-transfer`'s job "
        "(benchmarks/results/baselines.md), not what a default for unseen perturbations is for.",
        "- norman-combos tests every double of the fixture; only some have both singles measured in training "
        "(split subgroups `combo_seen2/1/0`). `linear` and `ridge` add their singles' deltas (a measured "
        "single's measured delta, else the model's prediction for it), `additive` the measured ones (the "
        "cell mean for an unmeasured single), so all agree where both singles were measured and the feature "
        "spec only matters for the singles never measured. `linear (before)` embedded a double as the sum of "
        "its singles' feature vectors.",
        "- The real fixture tasks test few perturbations and almost every VCC score is 0 (no spec beats the "
        "cell mean on DES, PDS and MAE together); their Pearson Δ CIs overlap widely, so they rank little.",
    ]
    return out + [""] + notes + [""]


def standing(kind: str, default: dict | None, g: pd.DataFrame) -> str | None:
    """Where the default spec's row stands against the best spec of `kind` by each of VCC score and Pearson Δ:
    the best, within the best's 95% CI, or below it."""
    rows = g[(g["model"] == kind) & (g["features"] != "task features")]
    if default is None or not len(rows):
        return None
    parts = []
    for key, name in (("vcc_score", "VCC score"), ("pearson_delta", "Pearson Δ")):
        top = rows.sort_values(key, ascending=False).iloc[0].to_dict()
        if default[key] >= top[key]:
            parts.append(f"{name}: the best ({default[key]:.3g})")
        else:
            lo = top["ci95"][key][0]
            where = "within" if default[key] >= lo else "BELOW"
            parts.append(f"{name}: {where} the CI of the best, `{top['features']}` "
                         f"({default[key]:.3g} vs {top[key]:.3g}, CI low {lo:.3g})")
    return f"`{DEFAULT_FEATURES}` " + "; ".join(parts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-boot", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="*", default=list(tasklib.TASKS))
    args = parser.parse_args()
    t0, load = time.perf_counter(), os.getloadavg()[0]
    rows = []
    for name in args.tasks:
        if not name.startswith("synthetic") and not DATA.is_dir():
            print(f"skipping {name}: {DATA} not found")
            continue
        task = tasklib.get_task(name, DATA, seed=args.seed, cache_dpath=REPO / "benchmarks" / "cache")
        print(f"== {name} ({len(task.split.train)} train / {len(task.split.test)} test items)")
        rows += score_task(task, args.n_boot, args.seed)
    git = git_commit()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "git": git, "host": platform.node(),
            "seconds": time.perf_counter() - t0, "n_boot": args.n_boot, "seed": args.seed,
            "load": f"1-min load average {load:.1f} on {os.cpu_count()} cores at the start"}
    print(f"wrote {write_results(rows, meta)}")


if __name__ == "__main__":
    main()
