"""VCC 2026's baseline, replicate and score (eval/vcc2026_scale.py): against definitions written out here, and
against cell-eval2 0.20.0 itself (`run --anchor`, `baseline`, `score`) when its environment exists."""

import json
import pathlib
import subprocess

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from biojepac.errors import InputError
from biojepac.eval import vcc2026 as v
from biojepac.eval import vcc2026_scale as s
from biojepac.eval.evaluate import evaluate

ROOT = pathlib.Path(__file__).resolve().parents[2]
CE2 = ROOT / "benchmarks/peers/envs/celleval2/bin/cell-eval2"
CTRL = "non-targeting"


def make_screen(seed, *, n_ctrl=150, n_per=50, n_genes=120, labels=None, targets=None, effect=1.5, null=(),
                draw_seed=None):
    """Raw counts: a control and one group per label; `targets[label]` is the gene knocked down (or None);
    labels in `null` have no effect at all. The last 3 genes are never expressed; cells come interleaved.
    `seed` fixes the biology, `draw_seed` the cells drawn from it."""
    rng = np.random.default_rng(seed)
    draw = np.random.default_rng(seed + 1000 if draw_seed is None else draw_seed)
    genes = np.array([f"G{i}" for i in range(n_genes)], dtype=object)
    labels = labels or [f"G{i}" for i in range(7)] + ["NOTAGENE"]
    targets = targets or {p: (int(p[1:]) if p.startswith("G") else None) for p in labels}
    base = rng.gamma(0.5, 3.0, n_genes)
    base[-3:] = 0.0
    rows, obs = [draw.poisson(base * draw.lognormal(0, 0.3, (n_ctrl, 1)))], [CTRL] * n_ctrl
    for p in labels:
        mu = base * np.exp(rng.normal(0, effect, n_genes) * (rng.random(n_genes) < 0.3))
        mu = base.copy() if p in null else mu
        if targets.get(p) is not None and p not in null:
            mu[targets[p]] *= 0.1
        rows.append(draw.poisson(mu * draw.lognormal(0, 0.3, (n_per, 1))))
        obs += [p] * n_per
    x, obs = np.vstack(rows).astype(np.float64), np.array(obs, dtype=object)
    order = draw.permutation(len(obs))
    return x[order], obs[order], genes


def _cs(x, labels, genes, name="t"):
    return v.count_screen(sp.csr_matrix(x), labels, genes, control=CTRL, name=name)


# ---- pure definitions (run everywhere) ----

def test_split_halves_cut_each_label_as_pandas_groupby_then_permutation():
    x, labels, genes = make_screen(0, n_ctrl=21, n_per=9, n_genes=10, labels=["AAA", "zzz", "G1"])
    sc = _cs(x, labels, genes)
    a, b = s.split_halves(sc, seed=123)
    rng = np.random.default_rng(123)  # the definition: groups in sorted label order (the control's among them)
    ref_a, ref_b = [], []
    for _, idx in pd.DataFrame({"t": pd.Categorical(labels)}).groupby("t", observed=True).indices.items():
        perm = rng.permutation(np.asarray(idx))
        h = len(idx) // 2
        ref_a.append(perm[:h])
        ref_b.append(perm[h:2 * h])
    for half, ref in ((a, ref_a), (b, ref_b)):
        assert (half.x != sc.x[np.concatenate(ref)]).nnz == 0
        assert np.array_equal(half.codes, sc.codes[np.concatenate(ref)])
    assert a.x.shape[0] == b.x.shape[0] == 10 + 3 * 4  # floor(n/2) per label, the odd cell dropped


def test_split_halves_refuse_a_label_with_one_cell():
    x, labels, genes = make_screen(0, n_ctrl=10, n_per=1, n_genes=8, labels=["G1", "G2"])
    with pytest.raises(InputError, match="at least 2"):
        s.split_halves(_cs(x, labels, genes), 0)


def test_baseline_is_the_mean_response_emitted_through_scaled_control_cells():
    x, labels, genes = make_screen(1, n_ctrl=30, n_per=12, n_genes=20, labels=["G1", "G2", "G5", "NOTAGENE"])
    sc = _cs(x, labels, genes)
    tcols = v.target_columns(sc.perts, sc.genes)
    bl = s.baseline_screen(sc, tcols, seed=7)
    perts = sorted(set(labels) - {CTRL})
    means = np.array([x[labels == p].mean(0) for p in perts])
    profile = np.array([np.mean([means[i, g] for i, p in enumerate(perts) if p != f"G{g}"]) for g in range(20)])
    ctrl = x[labels == CTRL]
    cmean = ctrl.mean(0)
    scale = np.where(cmean > 0, profile / np.where(cmean > 0, cmean, 1), 0.0)
    rng = np.random.default_rng(7)
    for code, p in enumerate(perts, start=1):
        draw = rng.integers(0, len(ctrl), size=int((labels == p).sum()))
        want = (ctrl[draw] * scale).astype(np.float32).astype(np.float64)
        assert np.array_equal(bl.x[bl.codes == code].toarray(), want), p
    assert np.array_equal(bl.x[bl.codes == 0].toarray(), ctrl)
    assert not np.array_equal(bl.x.data, np.round(bl.x.data))  # fractional, admitted for the baseline only


def test_scores_follow_cell_eval2_policies_and_clamps():
    b = {m: 0.2 for m in s.SCORED} | {"de_wilcoxon_lfc_nmae": 1.0, "expr_mse_unbiased_capped_norm": 0.9}
    r = {m: 0.8 for m in s.SCORED} | {"de_wilcoxon_lfc_nmae": 0.5, "expr_mse_unbiased_capped_norm": 0.1}
    u = {"pds_cosine": 1.1, "de_wilcoxon_sig_jaccard": 0.0, "de_wilcoxon_direction_reach_raw": float("nan"),
         "de_wilcoxon_direction_fidelity_yield_raw": 0.5, "de_wilcoxon_lfc_nmae": 9.0,
         "expr_mse_unbiased_capped_norm": 0.05}
    got = s.scale_scores(u, b, r)
    assert got["pds_cosine"] == pytest.approx(1.5)  # above the replicate: not clipped
    assert got["de_wilcoxon_sig_jaccard"] == pytest.approx(-1 / 3)  # below the baseline: not clipped
    assert got["de_wilcoxon_direction_reach_raw"] == pytest.approx(-1 / 3)  # missing -> the score of 0
    assert got["de_wilcoxon_direction_fidelity_yield_raw"] == pytest.approx(0.5)
    assert got["de_wilcoxon_lfc_nmae"] == -6.0  # 1 - (9 - 0.5)/0.5 = -16, floored
    assert got["expr_mse_unbiased_capped_norm"] == 1.0  # better than the replicate: capped at 1
    assert got["avg_score"] == pytest.approx(np.mean([got[m] for m in s.SCORED]))
    u2 = u | {"expr_mse_unbiased_capped_norm": 2.0, "de_wilcoxon_lfc_nmae": float("nan")}
    got2 = s.scale_scores(u2, b, r)
    assert got2["expr_mse_unbiased_capped_norm"] == 0.0 and got2["de_wilcoxon_lfc_nmae"] == -6.0
    with pytest.raises(InputError, match="pds_cosine"):
        s.scale_scores(u, b, r | {"pds_cosine": 0.2})  # replicate no better than the baseline


def test_target_columns_read_the_map_as_cell_eval2_does():
    genes = np.array(["A", "B", "C"])
    perts = np.array(["A", "B-1", "X", "Y"])
    assert list(v.target_columns(perts, genes)) == [0, -1, -1, -1]
    assert list(v.target_columns(perts, genes, {"B-1": "B", "A": None})) == [-1, 1, -1, -1]
    assert list(v.target_columns(perts, genes, {"*": None, "B-1": "B"})) == [-1, 1, -1, -1]
    with pytest.raises(InputError, match="target-gene map"):
        v.target_columns(np.array(["X", "Y"]), genes)
    v.target_columns(np.array(["X", "Y"]), genes, {"X": None})  # declared: no error


def test_harmonised_target_map_resolves_outdated_symbols_only_when_unambiguous():
    genes = ["QARS1", "MARCHF8", "WWTR1", "TAFAZZIN", "GAPDH"]
    got = v.harmonised_target_map(["QARS", "MARCH8", "TAZ", "GAPDH", "NOTAGENE"], genes)
    assert got == {"QARS": "QARS1", "MARCH8": "MARCHF8"}  # TAZ: two candidates, never guessed


def test_de_metrics_join_tables_with_different_kept_genes_as_cell_eval2():
    # real keeps genes 0-3, pred keeps 1-4: gene 0 is real-only, gene 4 pred-only
    real = v.DETable(lfc=np.array([[1.0, -1.0, 2.0, 0.5]]), pval=np.full((1, 4), 1e-4), padj=np.full((1, 4), 1e-3))
    pred = v.DETable(lfc=np.array([[-1.0, 2.0, -0.5, 3.0]]), pval=np.array([[1e-5, 1e-4, 0.5, 1e-6]]),
                     padj=np.array([[1e-4, 1e-3, 0.6, 1e-5]]))
    axis = np.ones(5, bool)
    rk, pk = np.array([1, 1, 1, 1, 0], bool), np.array([0, 1, 1, 1, 1], bool)
    got = v.de_metrics(v.on_genes(real, rk, axis), v.on_genes(pred, pk, axis), np.zeros((1, 5), bool),
                       np.array([f"g{i}" for i in range(5)]))
    # sig: real {0,1,2,3}, pred {1,2,4}: Jaccard 2/5
    assert got["de_wilcoxon_sig_jaccard"][0] == pytest.approx(2 / 5)
    # scored = pred sig in the inner join {1,2}, both signs right; over max(2, 4 real significant)
    assert got["de_wilcoxon_direction_fidelity_yield_raw"][0] == pytest.approx(2 / 4)
    # ranking over the inner join's real-significant genes {1,2,3} (gene 0 is not in the pred table): pred-sig
    # first by p_adj -> 1, 2 (both right), then 3 (wrong): purity 1, 1, 2/3 -> depth 2 of the 4 real significant
    assert got["de_wilcoxon_direction_reach_raw"][0] == pytest.approx(2 / 4)
    assert np.isnan(got["de_wilcoxon_lfc_nmae"][0])  # gate of 4 < 10


def test_lfc_nmae_reference_is_the_full_gate_ratio_of_means():
    rng = np.random.default_rng(3)
    n_genes = 30
    full = v.Side(None, None, v.DETable(rng.normal(0, 2, (2, n_genes)), np.full((2, n_genes), 1e-5),
                                        np.where(rng.random((2, n_genes)) < 0.8, 1e-4, 0.5)), np.ones(n_genes, bool))
    ka = np.arange(n_genes) != 3  # half A dropped gene 3 in its CPM filter: LFC 0 there
    one = np.ones((2, n_genes))
    a = v.Side(None, None, v.DETable(rng.normal(0, 2, (2, n_genes - 1)), one[:, 1:], one[:, 1:]), ka)
    b = v.Side(None, None, v.DETable(rng.normal(0, 2, (2, n_genes)), one, one), np.ones(n_genes, bool))
    tcols = np.array([5, -1])
    got = s.lfc_nmae_reference(full, a, b, tcols)
    la = np.zeros((2, n_genes))
    la[:, ka] = a.de.lfc
    raws = []
    for i in range(2):
        gate = (full.de.padj[i] < 0.05) & (np.arange(n_genes) != tcols[i])
        raws.append(np.abs(la[i, gate] - b.de.lfc[i, gate]).mean() / np.abs(full.de.lfc[i, gate]).mean())
    assert got == pytest.approx(np.mean(raws))


def test_evaluate_vcc2026_scores_each_context_on_its_own_scale(tmp_path):
    import anndata as ad

    def two_contexts(seed):
        blocks = [make_screen(seed + k, n_ctrl=150, n_per=50, n_genes=100, effect=1.5) for k in range(2)]
        x = np.vstack([b[0] for b in blocks])
        obs = pd.DataFrame({"target_gene": np.concatenate([b[1] for b in blocks]),
                            "cell_line": np.repeat(["K562", "RPE1"], [len(b[1]) for b in blocks])},
                           index=[str(i) for i in range(len(x))])
        return ad.AnnData(sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=blocks[0][2]))

    real, pred = two_contexts(0), two_contexts(0)
    pred.X = pred.X.copy()
    pred.X.data = np.maximum(pred.X.data - 1, 0)  # a slightly wrong prediction
    before = real.X.copy()
    out = evaluate(pred, real, profile="vcc2026", context_col="cell_line", out_dpath=tmp_path / "ev")
    assert (real.X != before).nnz == 0
    per = pd.read_csv(tmp_path / "ev/per_perturbation.csv")
    assert list(per.columns[:3]) == ["perturbation", "context", "pds_cosine"] and len(per) == 16
    assert {"de_wilcoxon_sig_jaccard", "de_wilcoxon_lfc_nmae", "expr_mse_unbiased_capped"} <= set(per.columns)
    agg = json.loads((tmp_path / "ev/aggregates.json").read_text())
    assert set(agg["contexts"]) == {"K562", "RPE1"}
    sub = real[real.obs["cell_line"] == "RPE1"]
    one = s.score_context(_cs(pred[pred.obs["cell_line"] == "RPE1"].X, sub.obs["target_gene"].values, sub.var_names.values),
                          _cs(sub.X, sub.obs["target_gene"].values, sub.var_names.values))
    assert out["contexts"]["RPE1"]["scores"] == pytest.approx(one.scores)
    assert agg["avg_score"] == pytest.approx(np.mean([c["scores"]["avg_score"] for c in agg["contexts"].values()]))
    scores = pd.read_csv(tmp_path / "ev/scores.csv")
    assert list(scores.columns) == ["context", "metric", "user", "baseline", "replicate", "score"]


def test_evaluate_vcc2026_refuses_fractional_predictions(tmp_path):
    import anndata as ad

    x, labels, genes = make_screen(0)  # a reference that anchors: it is summarised before the prediction is read
    real = ad.AnnData(sp.csr_matrix(x), obs=pd.DataFrame({"target_gene": labels}), var=pd.DataFrame(index=genes))
    pred = real.copy()
    pred.X = pred.X * 0.5
    with pytest.raises(InputError, match="integer counts"):
        evaluate(pred, real, profile="vcc2026")


# ---- against cell-eval2 0.20.0 (skipped without its environment) ----

CONTEXTS = {
    # ties, all-zero genes, an unresolved label, and a poor prediction (both clamps bind)
    "A": dict(real=dict(seed=10), pred=dict(seed=11, effect=1.2), tmap=None),
    # outdated symbols resolved by our harmonisation, a label declared to have no target gene, a perturbation
    # with no effect (no DE), genes around the 5-CPM control filter, and a good prediction
    "B": dict(real=dict(seed=20, labels=["QARS", "MARCH8", "G3", "G4", "G5", "cytokine", "G7"],
                        targets={"QARS": 0, "MARCH8": 1, "G3": 3, "G4": 4, "G5": 5, "cytokine": None, "G7": 7},
                        null=("G7",), n_genes=150, n_per=80, effect=2.0),
              pred=dict(seed=20, labels=["QARS", "MARCH8", "G3", "G4", "G5", "cytokine", "G7"],
                        targets={"QARS": 0, "MARCH8": 1, "G3": 3, "G4": 4, "G5": 5, "cytokine": None, "G7": 7},
                        null=("G7",), n_genes=150, n_per=80, effect=2.0, n_ctrl=140, draw_seed=5),
              tmap={"cytokine": None}),
}


def _context_files(tmp, name, spec):
    import anndata as ad

    out = {}
    for side in ("real", "pred"):
        kw = dict(spec[side])
        x, labels, genes = make_screen(kw.pop("seed"), **kw)
        if name == "B":
            genes = genes.copy()
            genes[:2] = ["QARS1", "MARCHF8"]
        if name == "A":
            x[:5, 7] = 3  # ties among non-zeros
        x[:, -4] = np.where(np.arange(len(x)) % 40 == 0, 1, 0)  # a gene near the control CPM filter
        a = ad.AnnData(sp.csr_matrix(x.astype(np.float32)), obs=pd.DataFrame(
            {"target": labels}, index=[str(i) for i in range(len(labels))]), var=pd.DataFrame(index=genes))
        out[side] = tmp / f"{name}_{side}.h5ad"
        a.write_h5ad(out[side])
        out[f"{side}_ad"] = a
    return out


def _run_cell_eval2(tmp, files, tmap):
    sets = []
    if tmap:
        sets = ["--set", "target_gene_map={" + ", ".join(f"{k}: {'null' if g is None else g}" for k, g in tmap.items()) + "}"]
    run = [str(CE2), "run", "-ap", str(files["pred"]), "-ar", str(files["real"]), "--preset", "vcc2026", "--anchor",
           "--set", f"outdir={tmp / 'run'}", *sets]
    base = [str(CE2), "baseline", "-ar", str(files["real"]), "--preset", "vcc2026", "-o", str(tmp / "base"), *sets]
    score = [str(CE2), "score", "--user-agg", str(tmp / "run/agg_results.csv"), "--baseline-agg",
             str(tmp / "base/baseline_agg.csv"), "--anchor", str(tmp / "run"), "-o", str(tmp / "score.csv")]
    for cmd in (run, base, score):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]
    import pyarrow.parquet as pq

    rd = lambda f: pd.read_csv(f, index_col=0, float_precision="round_trip")  # noqa: E731
    anchor = pq.read_table(tmp / "run/anchor_agg.parquet").to_pandas().set_index("metric")["replicate"]
    return dict(per=rd(tmp / "run/results.csv").reset_index().pivot(index="perturbation", columns="metric", values="value"),
                user=rd(tmp / "run/agg_results.csv").loc["mean"], base=rd(tmp / "base/baseline_agg.csv").loc["mean"],
                rep=anchor, score=rd(tmp / "score.csv")["from_replicate"])


@pytest.fixture(scope="module")
def cross_check(tmp_path_factory):
    if not CE2.exists():
        pytest.skip("cell-eval2 env absent (benchmarks/peers/envs/celleval2)")
    tmp = tmp_path_factory.mktemp("ce2")
    out = {}
    for name, spec in CONTEXTS.items():
        files = _context_files(tmp, name, spec)
        (tmp / name).mkdir()
        out[name] = (files, spec["tmap"], _run_cell_eval2(tmp / name, files, _harmonised(files, spec["tmap"])))
    return out


def _harmonised(files, tmap):
    real = files["real_ad"]
    labels = sorted(set(real.obs["target"]) - {CTRL})
    return v.harmonised_target_map(labels, list(real.var_names)) | (tmap or {})


@pytest.mark.parametrize("name", sorted(CONTEXTS))
def test_metrics_baseline_replicate_and_score_equal_cell_eval2(cross_check, name):
    import anndata as ad

    files, tmap, ce = cross_check[name]
    real, pred = files["real_ad"], files["pred_ad"]
    both = ad.concat({name: real, "other": real}, label="ctx", index_unique="-")  # several contexts in one file
    both_pred = ad.concat({name: pred, "other": real}, label="ctx", index_unique="-")
    res = evaluate(both_pred, both, profile="vcc2026", pert_col="target", context_col="ctx", target_gene_map=tmap)
    got = res["contexts"][name]
    per = res["per_perturbation"]
    per = per[per["context"] == name]
    for m in (*v.METRICS, "expr_distance_unbiased"):
        theirs = ce["per"].loc[per.index, m].to_numpy(float)
        ours = per[m].to_numpy(float)
        assert np.array_equal(np.isnan(ours), np.isnan(theirs)), m
        assert np.allclose(ours[~np.isnan(ours)], theirs[~np.isnan(ours)], rtol=1e-9, atol=1e-12), m
    for m in s.SCORED:
        assert got["user"][m] == pytest.approx(ce["user"][m], rel=1e-9, abs=1e-12), m
        assert got["baseline"][m] == pytest.approx(ce["base"][m], rel=1e-9, abs=1e-12), m
        assert got["replicate"][m] == pytest.approx(ce["rep"][m], rel=1e-9, abs=1e-12), m
        assert got["scores"][m] == pytest.approx(ce["score"][m], rel=1e-9, abs=1e-12), m
    assert got["scores"]["avg_score"] == pytest.approx(ce["score"]["avg_score"], rel=1e-9, abs=1e-12)


def test_jackknife_series_path_equals_the_direct_sum():
    x, labels, genes = make_screen(4, n_ctrl=300, n_per=60, n_genes=80, labels=["G1", "G2"])
    x[:2, 5] = 0  # a cell with an empty gene, and genes never expressed (the last 3)
    sc = _cs(x, labels, genes)
    assert v.SERIES_E_MAX * 2 > 1 / 59  # the 60-cell groups and the control take the series
    got = v.jackknife(sc, v.group_sums(sc.x, sc.codes, 3))
    for g in range(3):
        y = x[sc.codes == g]
        n, tot = len(y), y.sum(0)
        loo = np.log1p(5e4 * (tot - y) / (tot.sum() - y.sum(1, keepdims=True)))
        assert got[g] == pytest.approx((n - 1) / n * ((loo - loo.mean(0)) ** 2).sum(), rel=1e-12)


def test_cli_evaluate_vcc2026_reads_a_target_map_and_writes_cell_eval2_names(tmp_path, capsys):
    import anndata as ad

    from biojepac.cli import main

    x, labels, genes = make_screen(30, labels=["G1", "G2", "G3", "ctrl-like", "G5"],
                                   targets={"G1": 1, "G2": 2, "G3": 3, "ctrl-like": 9, "G5": 5})
    for name, xx in (("real", x), ("pred", np.maximum(x - 1, 0))):
        ad.AnnData(sp.csr_matrix(xx), obs=pd.DataFrame({"target_gene": labels}, index=[str(i) for i in range(len(x))]),
                   var=pd.DataFrame(index=genes)).write_h5ad(tmp_path / f"{name}.h5ad")
    (tmp_path / "map.csv").write_text("label,gene\nctrl-like,G9\n")
    args = ["evaluate", "--pred", str(tmp_path / "pred.h5ad"), "--real", str(tmp_path / "real.h5ad"),
            "--profile", "vcc2026", "--out-dpath", str(tmp_path / "ev")]
    assert main(args + ["--target-map", str(tmp_path / "map.csv")]) == 0
    assert "avg_score" in capsys.readouterr().out
    scores = pd.read_csv(tmp_path / "ev/scores.csv")
    assert list(scores["metric"]) == [*s.SCORED, "avg_score"]
    (tmp_path / "bad.csv").write_text("label,gene\nonly-one-field\n")
    assert main(args + ["--target-map", str(tmp_path / "bad.csv")]) == 2
    assert "not `label,gene`" in capsys.readouterr().err
