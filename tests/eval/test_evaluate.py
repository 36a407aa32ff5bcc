"""The evaluate() API and CLI: outputs written, baseline built from the training screen, known-answer checks."""

import json

import numpy as np
import pytest

from biojepac.cli import main
from biojepac.eval import bootstrap, report_metrics
from biojepac.eval.evaluate import evaluate
from biojepac.eval.inputs import read_scored_screen
from biojepac.eval.stats import summarize


def test_evaluate_writes_everything_and_perfect_prediction_scores_top(tmp_path, screen_factory):
    real = screen_factory(1)
    out = evaluate(real, real, train=screen_factory(3, effect_seed=7), profile="all", out_dpath=tmp_path, n_boot=50, plots=True)
    agg = out["aggregates"]
    # A prediction identical to the truth: MAE 0, DES 1 wherever there are DEGs, Pearson delta 1.
    per = out["per_perturbation"]
    assert agg["mae"] == 0 and agg["mse"] == 0
    assert np.all(per["overlap_at_N"][per["n_real_degs"] > 0] == 1.0)
    assert np.allclose(per["pearson_delta"], 1.0) and np.allclose(per["de_jaccard"], 1.0)
    assert np.all(per["pds_cosine"] == 1.0) and np.all(per["discrimination_score_l1"] == 1.0)
    has = per["n_real_degs"] > 0
    assert np.all(per["lfc_nmae"][has] == 0) and np.all(per["de_direction"][has] == 1)
    # The split-half ceiling is below perfect and above the cell-mean baseline for DE Jaccard; the
    # Spearman-Brown full-depth ceiling lies between the split-half value and 1.
    split_half = agg["ceiling_split_half"]["de_jaccard"]
    assert agg["baseline"]["de_jaccard"] < split_half < agg["ceiling"]["de_jaccard"] < 1.0
    lo, hi = agg["ci95"]["vcc_score"]
    assert lo <= agg["vcc_score"] <= hi
    assert agg["vcc_score"] > 50 and agg["baseline"]["mae"] > 0
    for key in ("per_perturbation", "aggregates", "report"):
        assert (tmp_path / out["paths"][key].split("/")[-1]).is_file()
    assert json.loads((tmp_path / "aggregates.json").read_text())["vcc_score"] == pytest.approx(agg["vcc_score"])
    md = (tmp_path / "report.md").read_text()
    for png in ("metric_distributions.png", "delta_best_worst.png", "des_vs_n_degs.png", "vs_baseline.png"):
        assert png in md and (tmp_path / png).stat().st_size > 1000


def test_cli_evaluate(tmp_path, screen_factory, capsys):
    screen_factory(1).write_h5ad(tmp_path / "real.h5ad")
    screen_factory(2, counts=False, noise=0.5).write_h5ad(tmp_path / "pred.h5ad")
    rc = main(["evaluate", "--pred", str(tmp_path / "pred.h5ad"), "--real", str(tmp_path / "real.h5ad"),
               "--profile", "report", "--out-dpath", str(tmp_path / "out"), "--n-boot", "20", "--plots"])
    assert rc == 0 and (tmp_path / "out" / "report.md").is_file()
    bad = screen_factory(2)[:, ::-1].copy()
    bad.write_h5ad(tmp_path / "bad.h5ad")
    rc = main(["evaluate", "--pred", str(tmp_path / "bad.h5ad"), "--real", str(tmp_path / "real.h5ad"),
               "--out-dpath", str(tmp_path / "out2")])
    assert rc == 2 and "different order" in capsys.readouterr().err


def test_gears_degs_match_scanpy_t_test(screen_factory):
    sc = pytest.importorskip("scanpy")
    adata = screen_factory(1, counts=False)
    s = summarize(read_scored_screen(adata, pert_col="target_gene", control="non-targeting"), with_de=False)
    ours = report_metrics.gears_degs(s, 10)
    sc.tl.rank_genes_groups(adata, groupby="target_gene", reference="non-targeting", rankby_abs=True,
                            n_genes=adata.n_vars, use_raw=False, method="t-test")
    names = adata.uns["rank_genes_groups"]["names"]
    genes = list(adata.var_names)
    for i, pert in enumerate(["G003", "G007", "G011", "G015+G016"]):
        j = sorted(set(adata.obs.target_gene) - {"non-targeting"}).index(pert)
        assert [genes.index(g) for g in names[pert][:10]] == list(ours[j]), pert


def test_bootstrap_ci_is_seeded_and_covers_the_mean():
    v = np.random.default_rng(0).normal(1.0, 1.0, size=200)
    a = bootstrap.mean_ci(v, bootstrap.resample_idx(200, 500, seed=3))
    b = bootstrap.mean_ci(v, bootstrap.resample_idx(200, 500, seed=3))
    assert a == b and a[0] < v.mean() < a[1] and 0.15 < a[1] - a[0] < 0.4  # ~ 2 * 1.96 / sqrt(200)


def test_ceiling_is_spearman_brown_for_agreement_metrics_only():
    from biojepac.eval import calibrated

    out = calibrated.full_depth_ceiling({"pds_cosine": 0.5, "de_jaccard": -0.2, "de_direction": 0.0, "lfc_nmae": 0.7})
    assert out["pds_cosine"] == 2.0 * 0.5 / 1.5
    assert np.isnan(out["de_jaccard"]) and np.isnan(out["de_direction"])
    assert out["lfc_nmae"] == 0.7


def test_small_pages_restores_numpys_setting():
    from biojepac.eval.h5read import small_pages

    toggle = np._core.multiarray._set_madvise_hugepage
    before = toggle(True)
    with small_pages():
        assert toggle(False) is False  # off inside
    assert toggle(before) is True  # back on after


def test_csv_is_what_pandas_writes():
    """The per-perturbation CSV is written without pandas, byte for byte as `DataFrame.to_csv` writes it."""
    import numpy as np
    import pandas as pd

    from biojepac.eval.evaluate import _csv_text

    perts = np.array(["G1", "a,b", 'q"t'])
    columns = {"mae": np.array([0.1, np.nan, 1e-12]), "r2": np.array([-np.inf, 3.0, 2 / 3]), "n": np.array([5.0, 0.0, 12.0])}
    ref = pd.DataFrame(columns, index=pd.Index(perts, name="perturbation")).to_csv()
    assert _csv_text(perts, columns) == ref


def test_output_folder_is_replaced_whole_or_not_at_all(tmp_path, screen_factory, monkeypatch):
    from biojepac.errors import InputError
    from biojepac.eval import report

    real, pred = screen_factory(1), screen_factory(2, counts=False, noise=0.5)
    out = tmp_path / "out"
    evaluate(real, real, profile="report", out_dpath=out, n_boot=10, plots=True)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"per_perturbation.csv", "aggregates.json", "report.md"} <= set(first)

    def killed(*args, **kwargs):  # the second run dies after its CSV and JSON, while plotting
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "write_report", killed)
    with pytest.raises(KeyboardInterrupt):
        evaluate(pred, real, profile="report", out_dpath=out, n_boot=10, plots=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first  # all of run 1, nothing of run 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    monkeypatch.undo()
    # A rerun without plots leaves no stale report.md or PNGs of the earlier run beside its files.
    evaluate(pred, real, profile="report", out_dpath=out, n_boot=10, plots=False)
    assert sorted(p.name for p in out.iterdir()) == ["aggregates.json", "per_perturbation.csv"]
    # A folder holding anything else is refused before any work, and left alone.
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"out: holds files that are not an evaluation's \(e.g. \['notes.txt'\]\)"):
        evaluate(pred, real, profile="report", out_dpath=out, n_boot=10)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="exists and is not a folder"):
        evaluate(pred, real, profile="report", out_dpath=tmp_path / "file", n_boot=10)


def test_headline_names_the_calibrated_metrics():
    """`evaluate.HEADLINE` spells the calibrated metrics out (so that `evaluate` loads without the scoring
    modules); it must stay in step with `calibrated.NAMES`."""
    from biojepac.eval import calibrated
    from biojepac.eval.evaluate import HEADLINE

    assert HEADLINE[-len(calibrated.NAMES) :] == calibrated.NAMES
