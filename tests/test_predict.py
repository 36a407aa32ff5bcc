"""`biojepac predict`: exact cell counts, matched controls + predicted shift, provenance, model dispatch."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from biojepac.cli import main
from biojepac.errors import InputError
from biojepac.models.baselines import CellMean
from biojepac.models.base import shift_controls
from biojepac.predict import PredictCommand, run_predict
from random_screen import build_random_screen


@pytest.fixture
def files(tmp_path):
    train = build_random_screen(n_cells=300, counts=False, contexts=("c1", "c2"), n_perts=6, seed=1)
    train.write_h5ad(tmp_path / "train.h5ad")
    counts = pd.DataFrame({"target_gene": ["G001", "G004+G005", "G030", "non-targeting"],
                           "n_cells": [7, 3, 250, 99], "median_umi_per_cell": [1, 2, 3, 4]})
    counts.to_csv(tmp_path / "pert_counts.csv", index=False)
    return tmp_path, train


def test_predict_writes_requests_controls_and_provenance(files):
    tmp, train = files
    out = tmp / "pred.h5ad"
    assert main(["predict", "--model", "cell-mean", "--screen", str(tmp / "train.h5ad"), "--context", "c1",
                 "--requests", str(tmp / "pert_counts.csv"), "--out", str(out), "--seed", "5"]) == 0
    pred = ad.read_h5ad(out)
    n_ctrl = int(((train.obs["target_gene"] == "non-targeting") & (train.obs["context"] == "c1")).sum())
    assert pred.obs["target_gene"].value_counts().to_dict() == {"G001": 7, "G004+G005": 3, "G030": 250,
                                                                "non-targeting": n_ctrl}
    assert list(pred.var_names) == list(train.var_names)
    # Every predicted cell is its matched real control plus the model's shift.
    delta = CellMean().fit(train).delta("G001", "c1")
    is_pred = (pred.obs["target_gene"] != "non-targeting").to_numpy()
    matched = train[pred.obs["control_cell"][is_pred]].X.toarray()
    np.testing.assert_allclose(pred.X[is_pred].toarray(), shift_controls(matched, delta), atol=1e-6)
    assert set(train.obs.loc[pred.obs["control_cell"], "context"]) == {"c1"}
    # The real controls are the context's controls, unchanged.
    np.testing.assert_array_equal(pred.X[~is_pred].toarray(), train[pred.obs_names[~is_pred].map(
        dict(zip(pred.obs_names, pred.obs["control_cell"])))].X.toarray())
    prov = pred.uns["biojepac"]
    assert json.loads(prov["model"])["kind"] == "cell-mean" and prov["seed"] == 5 and prov["context"] == "c1"
    assert "predict" in prov["command"]


def test_seeded_and_saved_models_dispatch(files):
    tmp, train = files
    base = dict(screen=tmp / "train.h5ad", context="c2", perturbations=("G002", "G003"), n_cells=20)
    a = run_predict(PredictCommand(model="cell-mean", out=tmp / "a.h5ad", seed=1, **base))
    CellMean().fit(train).save(tmp / "saved")
    b = run_predict(PredictCommand(model=str(tmp / "saved"), out=tmp / "b.h5ad", seed=1, **base))
    c = run_predict(PredictCommand(model="cell-mean", out=tmp / "c.h5ad", seed=2, **base))
    xa, xb, xc = (ad.read_h5ad(p).X.toarray() for p in (a, b, c))
    np.testing.assert_array_equal(xa, xb)
    assert not np.array_equal(xa, xc)
    assert json.loads(ad.read_h5ad(b).uns["biojepac"]["model"])["path"] == str(tmp / "saved")


def test_predict_errors(files):
    tmp, _ = files
    base = dict(screen=tmp / "train.h5ad", out=tmp / "x.h5ad", perturbations=("G001",))
    with pytest.raises(InputError, match="'c9'"):
        run_predict(PredictCommand(model="cell-mean", context="c9", **base))
    with pytest.raises(InputError, match="baseline kind"):
        run_predict(PredictCommand(model="gears", context="c1", **base))
    (tmp / "bad.csv").write_text("gene,count\nA,1\n")
    with pytest.raises(InputError, match="bad.csv"):
        run_predict(PredictCommand(model="cell-mean", context="c1", screen=tmp / "train.h5ad", out=tmp / "x.h5ad",
                                  requests=tmp / "bad.csv"))
    assert not (tmp / "x.h5ad").exists()


def test_split_predict_then_evaluate(tmp_path):
    """The README workflow: split -> predict (fitted on the split's train cells) -> evaluate."""
    from biojepac.data import splits
    from biojepac.data.normalize import normalize_log1p
    from biojepac.data.synthetic import get_screen_preset, make_synthetic_screen

    screen = normalize_log1p(make_synthetic_screen(get_screen_preset("tiny"), seed=0))
    screen.write_h5ad(tmp_path / "screen.h5ad")
    split = splits.make_unseen_perturbation_split(screen, context="ctx0", fractions=(0.6, 0.1, 0.3), seed=0)
    splits.save_split(split, tmp_path / "split.json")
    test_perts = sorted(p for _, p in split.test)
    real = screen[(screen.obs["context"] == "ctx0").to_numpy() &
                  screen.obs["target_gene"].isin([*test_perts, "non-targeting"]).to_numpy()].copy()
    real.write_h5ad(tmp_path / "real.h5ad")
    real.obs["target_gene"].value_counts().rename_axis("target_gene").reset_index(name="n_cells").to_csv(
        tmp_path / "requests.csv", index=False)
    assert main(["predict", "--model", "cell-mean", "--screen", str(tmp_path / "screen.h5ad"), "--split",
                 str(tmp_path / "split.json"), "--context", "ctx0", "--requests", str(tmp_path / "requests.csv"),
                 "--out", str(tmp_path / "pred.h5ad")]) == 0
    pred = ad.read_h5ad(tmp_path / "pred.h5ad")
    prov = json.loads(pred.uns["biojepac"]["model"])
    train_cells = splits.split_masks(screen, split)["train"].sum()
    assert prov["fit_cells"] == train_cells < screen.n_obs  # fitted on the split's train part only
    assert json.loads(pred.uns["biojepac"]["split"])["content"]["test"] == [list(t) for t in split.test]
    assert main(["evaluate", "--pred", str(tmp_path / "pred.h5ad"), "--real", str(tmp_path / "real.h5ad"),
                 "--screen", str(tmp_path / "screen.h5ad"), "--out-dpath", str(tmp_path / "eval"), "--profile", "vcc",
                 "--n-boot", "20"]) == 0
    per = pd.read_csv(tmp_path / "eval" / "per_perturbation.csv", index_col=0)
    assert sorted(per.index) == test_perts
    assert "vcc_score" in json.loads((tmp_path / "eval" / "aggregates.json").read_text())  # the --screen baseline


@pytest.mark.parametrize("change", ["reordered", "renamed", "missing"])
def test_saved_model_refuses_a_screen_with_other_genes(files, change):
    tmp, train = files
    CellMean().fit(train).save(tmp / "saved")
    genes = list(train.var_names)
    other = {"reordered": lambda a: a[:, genes[::-1]].copy(),
             "renamed": lambda a: _renamed(a, {"G003": "NEW3"}),
             "missing": lambda a: a[:, genes[:-2]].copy()}[change](train)
    other.write_h5ad(tmp / "other.h5ad")
    expect = {"reordered": r"same genes in another order \(position 0: 'G039' here, 'G000' in the model.*reorder the screen",
              "renamed": r"40 vs 40; first difference at position 3; missing here e.g. \['G003'\], not in the model e.g. \['NEW3'\]",
              "missing": r"38 vs 40; first difference at position 38; missing here e.g. \['G038', 'G039'\]"}[change]
    with pytest.raises(InputError, match=rf"other.h5ad: genes differ from the model's \(.*saved/model.json 'genes'.*{expect}"):
        run_predict(PredictCommand(model=str(tmp / "saved"), screen=tmp / "other.h5ad", out=tmp / "x.h5ad", context="c1",
                                   perturbations=("G001",)))
    assert not (tmp / "x.h5ad").exists()


def _renamed(adata, mapping):
    adata = adata.copy()
    adata.var_names = [mapping.get(g, g) for g in adata.var_names]
    return adata


def test_model_json_cannot_name_code_to_run(files):
    """A `loader` (or similar) field naming a callable is refused; nothing it names is imported or called."""
    tmp, train = files
    CellMean().fit(train).save(tmp / "saved")
    probe = tmp / "probe_mod.py"
    probe.write_text(f"import pathlib\npathlib.Path({str(tmp / 'RAN')!r}).touch()\ndef load(*a, **k):\n    pass\n")
    meta = json.loads((tmp / "saved" / "model.json").read_text())
    (tmp / "saved" / "model.json").write_text(json.dumps({**meta, "loader": "probe_mod:load"}))
    import sys

    sys.path.insert(0, str(tmp))
    try:
        with pytest.raises(InputError, match=r"model.json: field 'loader' is not part of the format"):
            run_predict(PredictCommand(model=str(tmp / "saved"), screen=tmp / "train.h5ad", out=tmp / "x.h5ad",
                                       context="c1", perturbations=("G001",)))
    finally:
        sys.path.remove(str(tmp))
    assert not (tmp / "RAN").exists() and "probe_mod" not in sys.modules


@pytest.mark.parametrize("text,message", [
    ("target_gene,n_cells\nG001,2.5\n", r"column 'n_cells' must be a positive whole number; bad rows: \['G001=2.5'\]"),
    ("target_gene,n_cells\nG001,0\n", r".*bad rows: \['G001=0'\]"),
    ("target_gene,n_cells\nG001,0.4\nG002,3\n", r".*bad rows: \['G001=0.4'\]"),
    ("target_gene,n_cells\nG001,x\n", r".*bad rows: \['G001=x'\]"),
    ("target_gene,n_cells\nG001,3\n,4\n", r"column 'target_gene' is blank on line\(s\) \[3\]"),
    ("target_gene,n_cells\n", r"no rows under the header"),
    ("", r"not a readable CSV"),
])
def test_bad_request_csvs_are_refused_in_one_line(files, text, message):
    tmp, _ = files
    (tmp / "req.csv").write_text(text)
    with pytest.raises(InputError, match=r"req.csv: " + message):
        run_predict(PredictCommand(model="cell-mean", screen=tmp / "train.h5ad", out=tmp / "x.h5ad", context="c1",
                                   requests=tmp / "req.csv"))
    assert not (tmp / "x.h5ad").exists()


def test_counts_depth_samples_raw_counts_at_the_stated_depth(files):
    tmp, train = files
    base = dict(screen=tmp / "train.h5ad", context="c1", perturbations=("G002", "G003"), n_cells=20, seed=3)
    logx = ad.read_h5ad(run_predict(PredictCommand(model="cell-mean", out=tmp / "log.h5ad", **base)))
    counts = ad.read_h5ad(run_predict(PredictCommand(model="cell-mean", out=tmp / "c.h5ad", counts_depth=5000, **base)))
    x = counts.X.toarray()
    assert np.array_equal(x, np.round(x)) and (x >= 0).all()
    assert np.array_equal(x.sum(1), np.where(logx.X.toarray().sum(1) > 0, 5000, 0))
    # each cell's counts follow its own expression profile: profile-weighted mean close to the expected share
    p = np.expm1(logx.X.toarray())
    p /= p.sum(1, keepdims=True)
    assert np.abs(x.sum(0) / x.sum() - p.mean(0)).max() < 0.01
    assert counts.uns["biojepac"]["counts_depth"] == 5000


def test_max_controls_keeps_that_many_real_controls(files):
    """--max-controls N below the context's control count keeps N distinct real controls, the same N for a seed."""
    tmp, train = files
    n_ctrl = int(((train.obs["target_gene"] == "non-targeting") & (train.obs["context"] == "c1")).sum())
    assert n_ctrl > 5
    outs = []
    for name in ("a", "b"):
        out = tmp / f"{name}.h5ad"
        assert main(["predict", "--model", "cell-mean", "--screen", str(tmp / "train.h5ad"), "--context", "c1",
                     "--perturbations", "G001", "--n-cells", "4", "--max-controls", "5", "--out", str(out)]) == 0
        outs.append(ad.read_h5ad(out))
    ctrl = outs[0].obs[outs[0].obs["target_gene"] == "non-targeting"]
    assert len(ctrl) == 5 and ctrl["control_cell"].is_unique
    assert set(train.obs.loc[ctrl["control_cell"], "context"]) == {"c1"}
    assert list(ctrl["control_cell"]) == list(outs[1].obs["control_cell"][outs[1].obs["target_gene"] == "non-targeting"])
