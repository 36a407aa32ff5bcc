"""VCC 2026 metrics (eval/vcc2026.py) against references computed another way (scipy, numpy), and against
cell-eval2 0.20.0 itself when its separate environment (benchmarks/peers/envs/celleval2) exists."""

import pathlib
import subprocess

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.stats

from biojepac.eval import vcc2026 as v

ROOT = pathlib.Path(__file__).resolve().parents[2]
CE2 = ROOT / "benchmarks/peers/envs/celleval2/bin/cell-eval2"


def _screen(seed, n_ctrl=80, n_per=30, n_genes=60, n_perts=6, effect=0.8):
    rng = np.random.default_rng(seed)
    genes = np.array([f"G{i}" for i in range(n_genes)])
    perts = [f"G{i}" for i in range(n_perts - 1)] + ["NOTAGENE"]
    base = rng.gamma(0.5, 3.0, n_genes)
    base[-3:] = 0.0  # all-zero genes
    rows, labels = [rng.poisson(base * rng.lognormal(0, 0.3, (n_ctrl, 1)))], ["non-targeting"] * n_ctrl
    for p in perts:
        mu = base * np.exp(rng.normal(0, effect, n_genes) * (rng.random(n_genes) < 0.3))
        if p != "NOTAGENE":
            mu[int(p[1:])] *= 0.1
        rows.append(rng.poisson(mu * rng.lognormal(0, 0.3, (n_per, 1))))
        labels += [p] * n_per
    x = np.vstack(rows).astype(np.float64)
    return x, np.array(labels), genes


def _cs(x, labels, genes):
    return v.count_screen(sp.csr_matrix(x), labels, genes, control="non-targeting", name="t")


def test_wilcoxon_pvalues_match_scipy_without_continuity():
    x, labels, genes = _screen(0)
    sc = _cs(x, labels, genes)
    table, kept = v.de_table(sc, workers=1)
    cpm = np.log1p(x / (x.sum(1, keepdims=True) / 1e6))  # scanpy's normalize_total(target_sum=1e6) order
    ctrl = cpm[labels == "non-targeting"]
    for i, p in enumerate(sc.perts):
        grp = cpm[labels == p]
        for j, g in enumerate(np.flatnonzero(kept)):
            ref = scipy.stats.mannwhitneyu(grp[:, g], ctrl[:, g], use_continuity=False, method="asymptotic").pvalue
            assert table.pval[i, j] == pytest.approx(ref, rel=1e-9, abs=1e-300)
        assert np.allclose(table.padj[i], scipy.stats.false_discovery_control(table.pval[i], method="bh"))
    means = np.array([x[labels == g].__truediv__(x[labels == g].sum(1, keepdims=True)).mean(0) * 1e6
                      for g in ["non-targeting"]])
    assert np.array_equal(kept, means[0] > 5.0)  # the 5-CPM control filter


def test_pds_cosine_matches_numpy_and_ties_take_the_midrank():
    rng = np.random.default_rng(1)
    real_b, pred_b = rng.random((6, 20)), rng.random((6, 20))
    panel = np.array([0, 3])
    got = v.pds_cosine(pred_b, real_b, panel)
    keep = np.setdiff1d(np.arange(20), panel)
    pe, re = (pred_b[1:] - real_b[0])[:, keep], (real_b[1:] - real_b[0])[:, keep]
    d = 1 - (pe / np.linalg.norm(pe, axis=1, keepdims=True)) @ (re / np.linalg.norm(re, axis=1, keepdims=True)).T
    ref = 1 - np.array([(row < row[i]).sum() for i, row in enumerate(d)]) / 4
    assert np.allclose(got, ref)
    same = np.tile(real_b[:1], (6, 1))  # zero predicted effect: every distance is 1 -> all tie -> 0.5
    assert np.array_equal(v.pds_cosine(same, real_b, panel), np.full(5, 0.5))


def test_jackknife_matches_the_definition():
    x, labels, genes = _screen(2, n_ctrl=12, n_per=7, n_genes=15, n_perts=2)
    sc = _cs(x, labels, genes)
    sums = v.group_sums(sc.x, sc.codes, 3)
    got = v.jackknife(sc, sums)
    for gidx in range(3):
        y = x[sc.codes == gidx]
        n, P = len(y), y.sum(0)
        loo = np.log1p(5e4 * (P - y) / (P.sum() - y.sum(1, keepdims=True)))
        ref = (n - 1) / n * ((loo - loo.mean(0)) ** 2).sum()
        assert got[gidx] == pytest.approx(ref, rel=1e-10)


def test_perfect_prediction_scores_the_top_of_every_metric():
    x, labels, genes = _screen(3)
    sc = _cs(x, labels, genes)
    per, agg = v.score_pair(sc, sc, workers=1)
    assert agg["de_wilcoxon_sig_jaccard"] == 1.0
    assert np.nanmin(per["de_wilcoxon_direction_reach_raw"]) == 1.0
    assert np.nanmax(per["de_wilcoxon_lfc_nmae"]) == 0.0
    assert agg["pds_cosine"] == 1.0


def _write(path, x, labels, genes):
    import anndata as ad
    import pandas as pd
    a = ad.AnnData(sp.csr_matrix(x.astype(np.float32)), obs=pd.DataFrame({"target": labels}, index=[str(i) for i in range(len(labels))]),
                   var=pd.DataFrame(index=genes))
    a.write_h5ad(path)


@pytest.mark.skipif(not CE2.exists(), reason="cell-eval2 env absent (benchmarks/peers/envs/celleval2)")
def test_per_perturbation_metrics_equal_cell_eval2(tmp_path):
    import pandas as pd
    # strong effects so the panel's summed expr distance is positive (cell-eval2 refuses otherwise)
    xr, labels, genes = _screen(10, n_ctrl=150, n_per=50, n_genes=120, n_perts=8, effect=1.5)
    xp, _, _ = _screen(11, n_ctrl=150, n_per=50, n_genes=120, n_perts=8, effect=1.2)
    xr[:5, 7] = 3  # ties among non-zeros
    _write(tmp_path / "real.h5ad", xr, labels, genes)
    _write(tmp_path / "pred.h5ad", xp, labels, genes)
    subprocess.run([str(CE2), "run", "-ap", str(tmp_path / "pred.h5ad"), "-ar", str(tmp_path / "real.h5ad"),
                    "--preset", "vcc2026", "--set", f"outdir={tmp_path / 'out'}"], check=False,
                   capture_output=True, timeout=600)
    ce = pd.read_csv(tmp_path / "out/results.csv", float_precision="round_trip")
    wide = ce.pivot(index="perturbation", columns="metric", values="value")
    per, _ = v.score_pair(_cs(xp, labels, genes), _cs(xr, labels, genes), workers=1)
    idx = {p: i for i, p in enumerate(v.count_screen(sp.csr_matrix(xr), labels, genes, control="non-targeting", name="r").perts)}
    for m in list(v.METRICS) + ["expr_distance_unbiased"]:
        theirs = wide[m].to_numpy(float)
        ours = np.array([per[m][idx[p]] for p in wide.index])
        assert np.array_equal(np.isnan(ours), np.isnan(theirs)), m
        ok = ~np.isnan(ours)
        assert np.allclose(ours[ok], theirs[ok], rtol=1e-9, atol=1e-12), m
