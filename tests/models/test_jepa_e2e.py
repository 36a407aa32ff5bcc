"""A tiny BioJEPAC fitted end to end on a tiny synthetic screen (one fit shared by every test here)."""

import json

import numpy as np
import pytest

from biojepac.models.base import PerturbationModel
from biojepac.models.jepa.config import get_preset
from biojepac.models import registry
from biojepac.models.jepa.model import BioJepacModel


def _screen():
    from biojepac.data.normalize import normalize_log1p
    from biojepac.data.synthetic import get_screen_preset, make_synthetic_screen

    adata = normalize_log1p(make_synthetic_screen(get_screen_preset("tiny", n_contexts=1, n_perts=6), seed=3), 1e4)
    return adata


def _deltas(adata, model, perts):
    """(observed, predicted) pseudobulk deltas vs controls, one row per perturbation."""
    x = adata.X.toarray()
    labels = adata.obs["target_gene"].to_numpy()
    ctrl = x[labels == "non-targeting"]
    obs = np.stack([x[labels == p].mean(0) - ctrl.mean(0) for p in perts])
    pred = np.stack([model.predict(ctrl, p, "ctx0", 0).mean(0) - ctrl.mean(0) for p in perts])
    return obs, pred


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    adata = _screen()
    model = BioJepacModel(get_preset("tiny"), run_dpath=tmp_path_factory.mktemp("bj")).fit(adata)
    return adata, model


def test_tiny_model_overfits_tiny_screen(fitted):
    adata, model = fitted
    assert isinstance(model, PerturbationModel)
    perts = sorted(set(adata.obs["target_gene"]) - {"non-targeting"})
    obs, pred = _deltas(adata, model, perts)
    # Fit on training perturbations: the predicted shifts must explain the observed ones far better than
    # "no change" (the cell-mean-of-controls answer) does.
    mse_model, mse_zero = np.mean((pred - obs) ** 2), np.mean(obs**2)
    corr = np.corrcoef(pred.ravel(), obs.ravel())[0, 1]
    print(f"mse model {mse_model:.4f} zero {mse_zero:.4f} corr {corr:.3f}")
    assert mse_model < 0.7 * mse_zero and corr > 0.5


def test_save_load_roundtrip_and_uncertainty(fitted, tmp_path):
    adata, model = fitted
    model.save(tmp_path / "m")
    with np.load(tmp_path / "m" / "prior.npz") as npz:  # the prior is saved in expression: one value per gene
        assert npz["delta"].shape[1] == npz["coef"].shape[1] == len(model.genes)
    assert json.loads((tmp_path / "m" / "model.json").read_text())["kind"] == "biojepac"
    again = registry.load(tmp_path / "m")
    ctrl = adata.X.toarray()[:70]
    p = sorted(set(adata.obs["target_gene"]) - {"non-targeting"})[-1]
    np.testing.assert_allclose(again.predict(ctrl, p, "ctx0", 0), model.predict(ctrl, p, "ctx0", 0), rtol=1e-5, atol=1e-6)
    mean, var = model.predict_distribution(ctrl, p, "ctx0")
    assert mean.shape == var.shape == ctrl.shape and (var >= 0).all() and var.max() > 0
