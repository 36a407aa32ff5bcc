"""The Virtual Cell Challenge 2025 metrics, defined as cell-eval 0.8.2 computes them, vectorised.

All three compare per-perturbation pseudobulks (mean log1p expression). Each file's perturbation effects
are taken against that file's own controls, as cell-eval does (so a prediction's control cells matter).

- MAE: mean over genes of |pred pseudobulk - real pseudobulk|.
- PDS (`discrimination_score_l1`): L1 distance from each predicted effect to every real effect, the
  target gene (the gene named like the perturbation) left out; score = 1 - rank / P, rank 0 = the true one
  is the nearest. Signed effects (no abs).
- DES (`overlap_at_N`): genes with BH FDR < 0.05 (in float32, as cell-eval casts) under a Mann-Whitney test
  vs control; N = number of real ones; DES = |real ∩ top-N predicted by |LFC||| / N, 0 when N = 0.
  Ties in |LFC| keep gene order (polars' ordinal rank).
- Score: per metric (u - b) / (1 - b), or 1 - u / b for MAE, against the cell-mean baseline; NaN -> 0,
  clipped below at 0, averaged, reported x100.
"""

from __future__ import annotations

import concurrent.futures
from typing import TYPE_CHECKING

import numpy as np

from biojepac.eval.inputs import ScoredScreen
from biojepac.eval.kernels import kernel
from biojepac.eval.stats import Summary, pdex_lfc

if TYPE_CHECKING:  # shapes for the reader and type checkers; jaxtyping + beartype cost 0.1 s of every evaluate's start
    from jaxtyping import Bool, Float


def mae(real: Summary, pred: Summary) -> np.ndarray:
    """(perts,) mean absolute error of pseudobulks over genes."""
    return np.abs(pred.mean[1:] - real.mean[1:]).mean(axis=1)


def target_gene_mask(perts: np.ndarray, genes: np.ndarray) -> np.ndarray:
    """(perts x genes) True where the gene is named exactly like the perturbation (cell-eval's exclusion)."""
    return perts[:, None] == genes[None, :]


def discrimination_l1(
    real_eff: Float[np.ndarray, "perts genes"],
    pred_eff: Float[np.ndarray, "perts genes"],
    exclude: Bool[np.ndarray, "perts genes"],
) -> Float[np.ndarray, " perts"]:
    """PDS: 1 - rank of the true perturbation among real effects by L1 distance to the predicted one."""
    assert real_eff.ndim == 2 and real_eff.shape == pred_eff.shape == exclude.shape, (real_eff.shape, pred_eff.shape, exclude.shape)
    assert real_eff.dtype.kind == pred_eff.dtype.kind == "f" and exclude.dtype == bool, (real_eff.dtype, pred_eff.dtype, exclude.dtype)
    return rank_score(_l1_distances(pred_eff, real_eff, exclude))


@kernel
def _l1_distances(pred_eff, real_eff, exclude):
    """dist[i, j] = sum over the genes not excluded for i of |pred_eff[i] - real_eff[j]|, added in gene
    order in float64 (cell-eval gets the same sums from scikit-learn's `pairwise_distances`, up to the
    order of additions). Four real perturbations share each pass over the genes: four independent sums
    instead of one chain of dependent additions (2.2x faster), each still added in gene order."""
    n_pred, n_genes = pred_eff.shape
    n_real = real_eff.shape[0]
    dist = np.empty((n_pred, n_real))
    for i in range(n_pred):
        p, skip = pred_eff[i], exclude[i]
        for j0 in range(0, n_real, 4):
            j1, j2, j3 = min(j0 + 1, n_real - 1), min(j0 + 2, n_real - 1), min(j0 + 3, n_real - 1)
            r0, r1, r2, r3 = real_eff[j0], real_eff[j1], real_eff[j2], real_eff[j3]
            t0 = t1 = t2 = t3 = 0.0
            for g in range(n_genes):
                if not skip[g]:
                    v = p[g]
                    t0 += abs(r0[g] - v)
                    t1 += abs(r1[g] - v)
                    t2 += abs(r2[g] - v)
                    t3 += abs(r3[g] - v)
            dist[i, j3], dist[i, j2], dist[i, j1], dist[i, j0] = t3, t2, t1, t0  # past the end: clamped j, same sum
    return dist


def rank_score(dist: Float[np.ndarray, "perts perts"]) -> Float[np.ndarray, " perts"]:
    """1 - (position of the diagonal in each row's argsort) / P, exactly as cell-eval 0.8.2 ranks: ties are
    broken by position (not ranked as ties), kept for an identical score; the calibrated and VCC 2026 PDS
    rank ties as ties (`vcc2026.true_midrank`)."""
    order = np.argsort(dist, axis=1)
    rank = np.argmax(order == np.arange(len(dist))[:, None], axis=1)
    return 1.0 - rank / len(dist)


def overlap_at_n(real_sig: np.ndarray, pred_sig: np.ndarray, pred: ScoredScreen, pred_s: Summary) -> np.ndarray:
    """DES per perturbation. Only perturbations with more predicted than real DEGs need an order."""
    n_real = real_sig.sum(axis=1)
    n_pred = pred_sig.sum(axis=1)
    hits = (real_sig & pred_sig).sum(axis=1).astype(np.float64)
    need = np.flatnonzero((n_pred > n_real) & (n_real > 0))
    exact_lfc = pdex_lfc(pred) if len(need) else None
    for i in need:
        genes = np.flatnonzero(pred_sig[i])
        approx = np.abs(pred_s.lfc(i, genes)).astype(np.float64)
        top = _top_n(genes, approx, int(n_real[i]), lambda g: exact_lfc(i + 1, g))
        hits[i] = real_sig[i, top].sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n_real > 0, hits / n_real, 0.0)


def _top_n(genes: np.ndarray, approx: np.ndarray, n: int, exact_lfc) -> np.ndarray:
    """The n genes with the largest |LFC|, ties in gene order (polars' ordinal rank, descending).

    Our |LFC| agrees with pdex's to ~1e-6 relative; only genes within a tolerance of the cut can swap, so
    only those get pdex's bit-exact LFC (cheap: a few columns), and the cut is made on exact values.
    """
    cut = np.sort(approx)[::-1][n - 1]
    tol = 1e-4 * abs(cut) + 1e-6 if np.isfinite(cut) else 0.0
    above = genes[approx > cut + tol] if np.isfinite(cut) else np.array([], np.int64)
    with np.errstate(invalid="ignore"):  # inf - inf when the cut falls among genes absent from controls
        near = genes[(np.abs(approx - cut) <= tol) | (approx == cut)]
    room = n - len(above)
    if room <= 0 or room >= len(near):  # all or none of the genes at the cut are in: no order needed
        return np.concatenate([above, near[: max(room, 0)]])
    pick = near[np.argsort(-np.abs(exact_lfc(near)), kind="stable")[:room]]
    return np.concatenate([above, pick])


def score(user: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    """cell-eval's `score_agg_metrics` on the means: per-metric improvement over the baseline, and the average."""
    out = {}
    user, base = ({k: np.float64(v) for k, v in d.items()} for d in (user, base))
    with np.errstate(divide="ignore", invalid="ignore"):  # a perfect baseline gives ±inf or NaN, as polars does
        for name in ("overlap_at_N", "discrimination_score_l1"):
            out[name] = (user[name] - base[name]) / (1.0 - base[name])
        out["mae"] = 1.0 - user["mae"] / base["mae"]
    out = {k: max(0.0, 0.0 if np.isnan(v) else float(v)) for k, v in out.items()}
    out["avg_score"] = float(np.mean(list(out.values())))
    return out


def vcc_metrics(real: ScoredScreen, real_s: Summary, pred: ScoredScreen, pred_s: Summary) -> dict[str, np.ndarray]:
    """Per-perturbation MAE, PDS and DES, plus the DEG counts behind DES. PDS's distances (a compiled
    loop that releases the GIL) and MAE are computed in a second thread while DES is worked out."""
    exclude = target_gene_mask(real.perts, real.genes)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pds = pool.submit(discrimination_l1, real_s.effects, pred_s.effects, exclude)
        errors = pool.submit(mae, real_s, pred_s)
        real_sig, pred_sig = real_s.significant, pred_s.significant
        des = overlap_at_n(real_sig, pred_sig, pred, pred_s)
        return {
            "mae": errors.result(),
            "discrimination_score_l1": pds.result(),
            "overlap_at_N": des,
            "n_real_degs": real_sig.sum(axis=1).astype(np.float64),
            "n_pred_degs": pred_sig.sum(axis=1).astype(np.float64),
        }
