"""The Markdown report with PNG plots: what a reader needs to trust (or not) a prediction.

Plots: the distribution of every per-perturbation metric; predicted vs real effect for the best and worst
perturbations; DES against the number of real DEGs; the raw metrics next to the baseline and the ceiling.
"""

import io
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

RANK_BY = ("discrimination_score_l1", "pearson_delta", "pds_cosine", "mae")
"""The first of these present orders perturbations from best to worst for the effect plot."""


def write_report(out_dpath: pathlib.Path, per: pd.DataFrame, agg: dict, real_sc, real_s, pred_s, write) -> pathlib.Path:
    pngs = {
        "metric_distributions.png": _distributions(per),
        "delta_best_worst.png": _best_worst(per, real_sc, real_s, pred_s),
    }
    if "overlap_at_N" in per:
        pngs["des_vs_n_degs.png"] = _des_vs_degs(per)
    if "baseline" in agg:
        pngs["vs_baseline.png"] = _vs_baseline(agg)
    for name, fig in pngs.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        write(out_dpath / name, buf.getvalue())
    fpath = out_dpath / "report.md"
    write(fpath, _markdown(per, agg, list(pngs)))
    return fpath


def _markdown(per: pd.DataFrame, agg: dict, pngs: list[str]) -> str:
    inp = agg["inputs"]
    lines = [
        "# BioJEPAC evaluation report", "",
        f"- prediction: `{inp['pred']}`{' (counts, normalised here)' if inp['pred_was_counts'] else ''}",
        f"- real: `{inp['real']}`{' (counts, normalised here)' if inp['real_was_counts'] else ''}",
        f"- baseline: `{inp['baseline']}`", f"- profile: {inp['profile']}; {agg['n_perturbations']} perturbations; "
        f"{agg['seconds']:.1f} s", "- metric definitions: docs/metrics.md", "",
    ]
    if "vcc_score" in agg:
        lo, hi = agg["ci95"]["vcc_score"]
        lines += [f"**VCC score (x100): {agg['vcc_score']:.2f}** (95% CI {lo:.2f} to {hi:.2f})", ""]
    lines += ["| metric | mean | 95% CI | baseline | ceiling | normalised |", "|---|---|---|---|---|---|"]
    for name, lo_hi in agg["ci95"].items():
        if name == "vcc_score":
            continue
        b = agg.get("baseline", {}).get(name, float("nan"))
        c = agg.get("ceiling", {}).get(name, float("nan"))
        nz = agg.get("normalised", {}).get(name, float("nan"))
        lines.append(f"| {name} | {agg[name]:.4f} | {lo_hi[0]:.4f} to {lo_hi[1]:.4f} | {b:.4f} | {c:.4f} | {nz:.3f} |")
    for name in ("r2_median", "r2_top50_median"):
        if name in agg:
            lines.append(f"| {name} | {agg[name]:.4f} | | | | |")
    lines += [""] + [f"![{p}]({p})" for p in pngs] + ["", "Per-perturbation values: `per_perturbation.csv`.", ""]
    return "\n".join(lines)


def _distributions(per: pd.DataFrame):
    cols = [c for c in per.columns if not c.startswith("baseline_")]
    n = len(cols)
    ncol = min(4, n)
    fig, axes = plt.subplots((n + ncol - 1) // ncol, ncol, figsize=(3.2 * ncol, 2.4 * ((n + ncol - 1) // ncol)))
    for ax, col in zip(np.ravel(axes), cols):
        v = per[col].to_numpy(dtype=float)
        ax.hist(v[np.isfinite(v)], bins=20, color="tab:blue", alpha=0.8)
        ax.set_title(col, fontsize=8)
    for ax in np.ravel(axes)[n:]:
        ax.axis("off")
    fig.suptitle("Per-perturbation metric distributions")
    return fig


def _best_worst(per: pd.DataFrame, real_sc, real_s, pred_s):
    key = next(k for k in RANK_BY if k in per)
    order = np.argsort(per[key].to_numpy(dtype=float), kind="stable")
    if key != "mae":
        order = order[::-1]
    picks = [("best", order[0]), ("worst", order[-1])]
    ctrl = real_s.mean[:1]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
    for ax, (tag, i) in zip(axes, picks):
        dr, dp = real_s.mean[1 + i] - ctrl[0], pred_s.mean[1 + i] - ctrl[0]
        ax.scatter(dr, dp, s=4, alpha=0.5)
        lim = float(np.nanmax(np.abs(np.r_[dr, dp]))) or 1.0
        ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.7)
        ax.set(xlabel="real delta vs real control", ylabel="predicted delta vs real control",
               title=f"{tag} by {key}: {real_sc.perts[i]}")
    return fig


def _des_vs_degs(per: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.scatter(per["n_real_degs"], per["overlap_at_N"], s=10)
    ax.set(xscale="symlog", xlabel="real DEGs (FDR < 0.05)", ylabel="DES (overlap_at_N)", title="DES vs number of real DEGs")
    return fig


def _vs_baseline(agg: dict):
    names = [k for k in ("overlap_at_N", "discrimination_score_l1", "mae", "pearson_delta", "pds_cosine", "de_jaccard")
             if k in agg and k in agg["baseline"]]
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 3.5))
    x = np.arange(len(names))
    ax.bar(x - 0.2, [agg[k] for k in names], 0.4, label="prediction",
           yerr=np.array([[agg[k] - agg["ci95"][k][0], agg["ci95"][k][1] - agg[k]] for k in names]).T.clip(0))
    ax.bar(x + 0.2, [agg["baseline"][k] for k in names], 0.4, label="baseline")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    title = "raw metrics vs baseline"
    if "vcc_score" in agg:
        title += f" (VCC score x100 = {agg['vcc_score']:.1f})"
    ax.set_title(title)
    ax.legend()
    return fig
