"""The linear baseline as Ahlmann-Eltze et al. (2025) describe it, and with default features on a real screen
whose targets use outdated symbols and are not measured genes."""

import json

import numpy as np
import pytest

from biojepac.data import schema
from biojepac.errors import InputError
from biojepac.features import DEFAULT_FEATURES, make_provider
from biojepac.models.baselines import MODELS, BaselineConfig, CellMean
from models.test_baselines import N_GENES, exact_screen, write_features


def planted(tmp_path, n_perts=24, n_feat=4, seed=0):
    rng = np.random.default_rng(seed)
    genes = [f"P{i}" for i in range(n_perts)]
    deltas = {(g, "c1"): rng.normal(0, 0.4, N_GENES) for g in genes}
    return genes, exact_screen(deltas), write_features(tmp_path, genes, rng.standard_normal((n_perts, n_feat)))


def test_bilinear_fit_is_least_squares_when_the_penalty_vanishes(tmp_path):
    """W = (GᵀG + λI)⁻¹ Gᵀ Y P (PᵀP + λI)⁻¹ -> argmin |Y - G W Pᵀ|², checked against vec(Y) = (P ⊗ G) vec(W)."""
    genes, train, spec = planted(tmp_path)
    model = MODELS["linear"](BaselineConfig(features=spec, n_components=5, ridge=1e-9)).fit(train)
    g, w = model.s["g_gk"], model.s["w_kl"]
    p = model.features.vectors(model.s["labels"]).astype(np.float64) - model.s["p_mean"]
    y = model._residuals().T  # genes x perturbations
    vec_w, *_ = np.linalg.lstsq(np.kron(p, g), y.reshape(-1, order="F"), rcond=None)
    np.testing.assert_allclose(w, vec_w.reshape(w.shape, order="F"), rtol=1e-5, atol=1e-8)
    # G is the `expr` feature spec's table: a measured target's P can be exactly its row of G.
    np.testing.assert_allclose(np.abs(g), np.abs(make_provider("expr:5", train).matrix), atol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "ridge", "knn"])
def test_combinations_are_the_sum_of_their_singles(tmp_path, kind):
    genes, _, spec = planted(tmp_path)
    rng = np.random.default_rng(3)
    fit = exact_screen({(g, "c1"): rng.normal(0, 0.4, N_GENES) for g in genes[:16]})
    model = MODELS[kind](BaselineConfig(features=spec)).fit(fit)
    measured = {g: model.s["delta_ng"][list(model.s["labels"]).index(g)] for g in genes[:2]}
    np.testing.assert_allclose(model.delta(f"{genes[0]}+{genes[1]}", "c1"), measured[genes[0]] + measured[genes[1]])
    # An unseen part contributes the model's prediction for it (linear: a single's delta b + G W P).
    np.testing.assert_allclose(model.delta(f"{genes[0]}+{genes[20]}", "c1"),
                               measured[genes[0]] + model.delta(genes[20], "c1"), atol=1e-12)
    assert not np.allclose(model.delta(genes[20], "c1"), CellMean().fit(fit).delta("x", "c1"))


def renamed_norman(shared_data_dpath, tmp_path):
    """Norman19 singles with KMT2A written as its old symbol MLL, and every target gene dropped from the
    measured genes (a screen whose targets are not measured genes, like most real ones)."""
    from biojepac.data.recipes import load_norman_mcfaline
    from biojepac.data.splits import make_unseen_perturbation_split, save_split

    full = load_norman_mcfaline(shared_data_dpath / "norman19_mcfaline23_devel.h5ad")
    norman = full[(full.obs["dataset"] == "norman19").to_numpy()].copy()
    labels = norman.obs[schema.PERT_COL].astype(str)
    targets = {g for lab in labels.unique() for g in schema.split_combo(lab)} - {schema.CONTROL}
    norman = norman[:, [g not in targets for g in norman.var_names]].copy()
    norman.obs[schema.PERT_COL] = ["+".join("MLL" if g == "KMT2A" else g for g in schema.split_combo(lab))
                                   for lab in labels]
    norman.obs = norman.obs[[schema.PERT_COL, schema.CONTEXT_COL, schema.BATCH_COL]].astype(str)
    norman.uns = {}
    screen_fpath = tmp_path / "norman_renamed.h5ad"
    norman.write_h5ad(screen_fpath)
    split = make_unseen_perturbation_split(norman, fractions=(0.6, 0.1, 0.3), seed=0)
    split_fpath = tmp_path / "split.json"
    save_split(split, split_fpath)
    return norman, screen_fpath, split, split_fpath, targets


@pytest.mark.parametrize("kind", ["linear", "ridge", "knn"])
def test_predict_with_default_features_on_a_renamed_screen(shared_data_dpath, tmp_path, kind):
    """`biojepac predict --model KIND` with no --features and no fallback flag: MLL (= KMT2A) and targets
    that are not measured genes all get vectors; a target nothing knows about is named with the spec."""
    import anndata as ad

    from biojepac import cli

    norman, screen_fpath, split, split_fpath, targets = renamed_norman(shared_data_dpath, tmp_path)
    assert not targets & set(norman.var_names) and "MLL" in set(norman.obs[schema.PERT_COL])
    context = str(norman.obs[schema.CONTEXT_COL].iloc[0])
    test = sorted({p for _, p in split.test})
    perts = sorted({*test, "MLL"} - {"IER5L"})  # IER5L: no GO annotation and not measured
    out = tmp_path / "pred.h5ad"
    args = ["predict", "--model", kind, "--screen", str(screen_fpath), "--split", str(split_fpath),
            "--context", context, "--n-cells", "20", "--out", str(out), "--perturbations", *perts]
    assert cli.main(args) == 0
    pred = ad.read_h5ad(out)
    assert set(pred.obs[schema.PERT_COL]) == {*perts, schema.CONTROL}
    assert json.loads(pred.uns["biojepac"]["features"])["spec"] == DEFAULT_FEATURES == "varm|expr|go"
    # The features are used: predictions differ between perturbations (the cell mean would not).
    means = np.stack([np.asarray(pred[(pred.obs[schema.PERT_COL] == p).to_numpy()].X.mean(0)).ravel() for p in perts])
    assert np.all(np.isfinite(means)) and np.abs(means - means.mean(0)).max() > 1e-4

    with pytest.raises(InputError, match=r"'varm\|expr\|go'.*IER5L"):
        from biojepac.data.load import read_training_screen

        train = read_training_screen(screen_fpath)
        model = MODELS[kind]().fit(train)
        model.delta("IER5L", context)


@pytest.mark.slow
def test_state_trains_with_default_features_on_a_renamed_screen(shared_data_dpath, tmp_path):
    """`train state`'s default features embed MLL and unmeasured targets, including unseen ones; IER5L (no
    vector anywhere) is left out of training with a warning, not invented."""
    from biojepac.data.load import read_training_screen
    from biojepac.models import registry

    norman, screen_fpath, split, _, _ = renamed_norman(shared_data_dpath, tmp_path)
    train = read_training_screen(screen_fpath)
    test = {p for _, p in split.test}
    fit = train[~train.obs[schema.PERT_COL].isin(test - {"IER5L"}).to_numpy()].copy()
    model, cfg = registry.build("state", preset="tiny", steps_scale=0.02, run_dpath=tmp_path / "run")
    assert cfg["features"] == "default"
    with pytest.warns(UserWarning, match="IER5L.*left out of training"):
        model.fit(fit)
    assert model.features.spec == DEFAULT_FEATURES
    ctrl = np.asarray(fit[(fit.obs[schema.PERT_COL] == schema.CONTROL).to_numpy()].X[:8].todense(), np.float32)
    context = str(norman.obs[schema.CONTEXT_COL].iloc[0])
    for pert in sorted(test - {"IER5L"}) + ["MLL"]:
        out = model.predict(ctrl, pert, context, 0)
        assert out.shape == ctrl.shape and np.all(np.isfinite(out))


@pytest.mark.slow
def test_biojepac_trains_with_default_features_on_a_renamed_screen(shared_data_dpath, tmp_path):
    """`train biojepac` resolves its features as every model does (`resolve_features`, DEFAULT_FEATURES):
    MLL and targets that are not measured genes get vectors; IER5L is left out of training with a warning."""
    from biojepac.data.load import read_training_screen
    from biojepac.models import registry

    norman, screen_fpath, split, _, _ = renamed_norman(shared_data_dpath, tmp_path)
    train = read_training_screen(screen_fpath)
    test = {p for _, p in split.test}
    fit = train[~train.obs[schema.PERT_COL].isin(test - {"IER5L"}).to_numpy()].copy()
    model, cfg = registry.build("biojepac", preset="tiny", steps_scale=0.02, run_dpath=tmp_path / "run")
    assert cfg["features"] == "default"
    with pytest.warns(UserWarning, match="IER5L"):
        model.fit(fit)
    assert model.features.spec == DEFAULT_FEATURES and model.features.source.startswith("varm: left out")
    ctrl = np.asarray(fit[(fit.obs[schema.PERT_COL] == schema.CONTROL).to_numpy()].X[:8].todense(), np.float32)
    context = str(norman.obs[schema.CONTEXT_COL].iloc[0])
    outs = [model.predict(ctrl, pert, context, 0) for pert in sorted(test - {"IER5L"}) + ["MLL"]]
    assert all(o.shape == ctrl.shape and np.all(np.isfinite(o)) for o in outs)
