"""Baselines against hand computations and planted ground truth.

`exact_screen` builds cells whose pseudobulk means are known exactly: each condition gets pairs of cells
mean +- noise, so every fitted delta equals the planted one (up to float32 rounding).
"""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from biojepac.errors import InputError
from biojepac.models.base import PerturbationModel
from biojepac.models.baselines import MODELS, BaselineConfig, CellMean
from biojepac.models.registry import load
from random_screen import build_random_screen

N_GENES = 30
BASE = 4.0  # control log1p level: high enough that planted deltas never reach the clip at 0


def exact_screen(deltas: dict[tuple[str, str], np.ndarray], ctrl: dict[str, np.ndarray] | None = None,
                 seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    contexts = sorted({c for _, c in deltas})
    ctrl = ctrl or {c: np.full(N_GENES, BASE) + rng.uniform(-0.5, 0.5, N_GENES) for c in contexts}
    rows, labels, ctxs = [], [], []
    for (label, c), mean in [*(((("non-targeting", c), ctrl[c]) for c in contexts)),
                             *(((k, ctrl[k[1]] + d) for k, d in deltas.items()))]:
        noise = rng.normal(0, 0.1, (2, N_GENES))
        rows += [mean + noise[0], mean - noise[0], mean + noise[1], mean - noise[1]]
        labels += [label] * 4
        ctxs += [c] * 4
    obs = pd.DataFrame({"target_gene": labels, "context": ctxs, "batch": "b0"}, index=[f"c{i}" for i in range(len(labels))])
    return ad.AnnData(X=sp.csr_matrix(np.asarray(rows, np.float32)), obs=obs,
                      var=pd.DataFrame(index=[f"G{i:03d}" for i in range(N_GENES)]))


def write_features(tmp_path, genes, mat) -> str:
    np.savez(tmp_path / "feat.npz", genes=np.asarray(genes), vectors=np.asarray(mat, np.float32))
    return f"file:{tmp_path / 'feat.npz'}"


def test_every_model_implements_the_protocol():
    for cls in MODELS.values():
        assert isinstance(cls(), PerturbationModel)


def test_cell_mean_equals_hand_computation():
    adata = build_random_screen(n_cells=400, counts=False, contexts=("c1", "c2"), seed=3)
    model = CellMean().fit(adata)
    x = adata.X.toarray()
    obs = adata.obs
    for c in ("c1", "c2"):
        in_c = (obs["context"] == c).to_numpy()
        perts = sorted(set(obs.loc[in_c, "target_gene"]) - {"non-targeting"})
        pert_means = [x[in_c & (obs["target_gene"] == p).to_numpy()].mean(0) for p in perts]
        ctrl_mean = x[in_c & (obs["target_gene"] == "non-targeting").to_numpy()].mean(0)
        np.testing.assert_allclose(ctrl_mean + model.delta("anything", c), np.mean(pert_means, 0), atol=1e-5)


def test_control_mean_returns_controls():
    adata = build_random_screen(counts=False)
    ctrl = adata.X[:20].toarray()
    np.testing.assert_array_equal(MODELS["control-mean"]().fit(adata).predict(ctrl, "G001", "c1", 0), ctrl)


def planted_low_rank(tmp_path, n_perts=40, rank=3, n_feat=6, seed=0):
    rng = np.random.default_rng(seed)
    genes = [f"P{i}" for i in range(n_perts)]
    phi = rng.standard_normal((n_perts, n_feat))
    # Responses that average to 0 over genes: the linear model's G (PCA with each condition's deltas centred
    # over genes, as in the paper) cannot represent a shift of every gene alike.
    g = rng.standard_normal((N_GENES, rank))
    g_true = np.linalg.qr(g - g.mean(0))[0]
    w_true = rng.standard_normal((rank, n_feat)) * 0.3
    truth = phi @ w_true.T @ g_true.T  # perts x genes, rank 3
    return genes, phi, truth, write_features(tmp_path, genes, phi)


@pytest.mark.parametrize("kind", ["linear", "ridge"])
def test_linear_recovers_planted_low_rank_effect(tmp_path, kind):
    genes, phi, truth, spec = planted_low_rank(tmp_path)
    train = exact_screen({(g, "c1"): truth[i] for i, g in enumerate(genes[:30])})
    model = MODELS[kind](BaselineConfig(features=spec, n_components=3, ridge=1e-6)).fit(train)
    pred = np.stack([model.delta(g, "c1") for g in genes[30:]])
    err = np.abs(pred - truth[30:]).max() / np.abs(truth[30:]).max()
    assert err < 1e-3, err
    # The cell-mean baseline is far off on the same held-out perturbations.
    cm = CellMean().fit(train).delta("x", "c1")
    assert np.abs(cm - truth[30:]).max() / np.abs(truth[30:]).max() > 0.3


def test_knn_copies_nearest_training_effect(tmp_path):
    genes, phi, truth, _ = planted_low_rank(tmp_path)
    phi[35] = phi[3] * 2.0  # same direction as a training perturbation
    spec = write_features(tmp_path, genes, phi)
    train = exact_screen({(g, "c1"): truth[i] for i, g in enumerate(genes[:30])})
    model = MODELS["knn"](BaselineConfig(features=spec, k=1)).fit(train)
    np.testing.assert_allclose(model.delta(genes[35], "c1"), truth[3], atol=1e-5)


def test_additive_is_exact_on_additive_data():
    rng = np.random.default_rng(1)
    d = {g: rng.normal(0, 0.5, N_GENES) for g in "ABCD"}
    train = exact_screen({(g, "c1"): d[g] for g in "ABCD"})
    model = MODELS["additive"]().fit(train)
    for combo in ("A+B", "C+D", "A+D"):
        a, b = combo.split("+")
        np.testing.assert_allclose(model.delta(combo, "c1"), d[a] + d[b], atol=1e-5)
    np.testing.assert_allclose(model.delta("B", "c1"), d["B"], atol=1e-5)
    with pytest.raises(InputError, match="'E'"):
        model.delta("A+E", "c1")
    lenient = MODELS["additive"](BaselineConfig(combo_fallback="cell-mean")).fit(train)
    np.testing.assert_allclose(lenient.delta("A+E", "c1"), d["A"] + np.mean(list(d.values()), 0), atol=1e-5)


def test_context_transfer_rescales():
    rng = np.random.default_rng(2)
    d = {g: rng.normal(0, 0.3, N_GENES) for g in "ABCDE"}
    # Context c2 responds twice as strongly; E is measured only in c1.
    deltas = {(g, "c1"): d[g] for g in "ABCDE"} | {(g, "c2"): 2 * d[g] for g in "ABCD"}
    for scale in ("norm", "lstsq"):  # both exact when c2 is c1 scaled
        model = MODELS["context-transfer"](BaselineConfig(transfer_scale=scale)).fit(exact_screen(deltas))
        np.testing.assert_allclose(model.delta("E", "c2"), 2 * d["E"], atol=2e-3)
        np.testing.assert_allclose(model.delta("A", "c1"), d["A"], atol=1e-5)  # measured there: as measured
    # Equal noise in both contexts' deltas shrinks the least-squares slope c2 <- c1 well below 2 (regression
    # dilution); the ratio of norms is pulled toward 1 too, but less.
    noisy = ({(g, "c1"): d[g] + rng.normal(0, 0.15, N_GENES) for g in "ABCDE"} |
             {(g, "c2"): 2 * d[g] + rng.normal(0, 0.15, N_GENES) for g in "ABCD"})
    lstsq = MODELS["context-transfer"](BaselineConfig(transfer_scale="lstsq")).fit(exact_screen(noisy))
    norm = MODELS["context-transfer"](BaselineConfig(transfer_scale="norm")).fit(exact_screen(noisy))
    assert lstsq.s["scale_cc"][1, 0] < norm.s["scale_cc"][1, 0] < 2.0


def test_crispr_mean_knocks_down_the_target():
    rng = np.random.default_rng(3)
    ctrl = {"c1": np.full(N_GENES, BASE)}
    genes = [f"G{i:03d}" for i in range(N_GENES)]
    deltas = {}
    for i in range(5):  # each knockdown leaves 20% of its target's (expm1) expression
        d = rng.normal(0, 0.1, N_GENES)
        d[i] = np.log1p(np.expm1(BASE) * 0.2) - BASE
        deltas[(genes[i], "c1")] = d
    model = MODELS["crispr-mean"]().fit(exact_screen(deltas, ctrl))
    pred = BASE + model.delta(genes[10], "c1")
    assert abs(np.expm1(pred[10]) / np.expm1(BASE) - 0.2) < 0.01
    np.testing.assert_allclose(np.delete(pred, 10), np.delete(BASE + MODELS["cell-mean"]().fit(
        exact_screen(deltas, ctrl)).delta("x", "c1"), 10), atol=1e-6)


def test_missing_features_listed_or_explicit_fallback(tmp_path):
    genes, phi, truth, spec = planted_low_rank(tmp_path)
    train = exact_screen({(g, "c1"): truth[i] for i, g in enumerate(genes[:30])})
    model = MODELS["ridge"](BaselineConfig(features=spec)).fit(train)
    with pytest.raises(InputError, match="NOPE"):
        model.delta("NOPE", "c1")
    lenient = MODELS["ridge"](BaselineConfig(features=spec, feature_fallback="cell-mean")).fit(train)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        np.testing.assert_allclose(lenient.delta("NOPE", "c1"), CellMean().fit(train).delta("x", "c1"))


def test_save_load_roundtrip_every_kind(tmp_path):
    genes, phi, truth, spec = planted_low_rank(tmp_path)
    train = exact_screen({(g, c): truth[i] * (1 + j) for i, g in enumerate(genes[:12]) for j, c in enumerate(("c1", "c2"))})
    ctrl = train.X[:4].toarray()
    for kind, cls in MODELS.items():
        model = cls(BaselineConfig(features=spec, n_components=2)).fit(train)
        model.save(tmp_path / kind)
        back = load(tmp_path / kind)
        assert back.kind == kind
        for pert in (genes[3], genes[20]) if kind not in ("additive",) else (genes[3], f"{genes[1]}+{genes[2]}"):
            np.testing.assert_array_equal(back.predict(ctrl, pert, "c2", 0), model.predict(ctrl, pert, "c2", 0))
