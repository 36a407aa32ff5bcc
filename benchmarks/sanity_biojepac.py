"""BioJEPAC sanity experiments on a synthetic screen with held-out perturbations.

Rows (all scored on perturbations never seen in training, pseudobulk delta vs the controls):
- `zero shift` and `cell-mean` (mean delta of the training perturbations): the baselines to beat;
- `biojepac (features)`: gene features from the screen's network (`varm["network_features"]`);
- `biojepac (learned ID)`: one-hot features of the training perturbations, i.e. a learned ID embedding;
  an unseen perturbation has an all-zero one-hot, so it cannot help there;
- `biojepac (shuffled labels)`: perturbation labels permuted across perturbed training cells;
- `biojepac (control->control)`: every training target replaced by a random control cell, so the true
  shift is zero; its predicted shift should be near zero (reported as mean |delta|).
"""

import time

import numpy as np

from biojepac.models.jepa.config import get_preset
from biojepac.models.jepa.model import BioJepacModel

CONTROL = "non-targeting"


def sanity_config():
    return get_preset("tiny")


def _split(adata, n_test: int, seed: int):
    perts = sorted(set(adata.obs["target_gene"]) - {CONTROL})
    test = sorted(np.random.default_rng(seed).choice(perts, n_test, replace=False).tolist())
    train_mask = ~adata.obs["target_gene"].isin(test).to_numpy()
    return adata[train_mask].copy(), test


def _score(pred_dpg: np.ndarray, obs_dpg: np.ndarray) -> dict:
    corr = [np.corrcoef(p, o)[0, 1] if p.std() > 0 else 0.0 for p, o in zip(pred_dpg, obs_dpg)]
    return {"delta_mse": round(float(np.mean((pred_dpg - obs_dpg) ** 2)), 5), "delta_pearson": round(float(np.mean(corr)), 3),
            "mean_abs_pred_delta": round(float(np.abs(pred_dpg).mean()), 4)}


def bench_sanity(seed: int = 0) -> list[dict]:
    from biojepac.data.normalize import normalize_log1p
    from biojepac.data.synthetic import get_screen_preset, make_synthetic_screen

    adata = normalize_log1p(make_synthetic_screen(get_screen_preset("tiny", n_genes=100, n_perts=24, n_contexts=1, cells_per_pert=40), seed=seed), 1e4)
    train, test = _split(adata, 8, seed)
    x = adata.X.toarray()
    labels = adata.obs["target_gene"].to_numpy()
    ctrl = x[labels == CONTROL]
    obs = np.stack([x[labels == p].mean(0) - ctrl.mean(0) for p in test])
    xt, lt = train.X.toarray(), train.obs["target_gene"].to_numpy()
    train_perts = sorted(set(lt) - {CONTROL})
    cell_mean = np.mean([xt[lt == p].mean(0) - xt[lt == CONTROL].mean(0) for p in train_perts], axis=0)
    rows = [{"model": "zero shift", **_score(np.zeros_like(obs), obs)},
            {"model": "cell-mean", **_score(np.repeat(cell_mean[None], len(test), 0), obs)}]
    print(rows, flush=True)
    cfg = sanity_config()
    rng = np.random.default_rng(seed + 1)

    shuffled = train.copy()
    is_pert = (lt != CONTROL)
    shuffled_labels = lt.copy()
    shuffled_labels[is_pert] = rng.permutation(lt[is_pert])
    shuffled.obs["target_gene"] = shuffled_labels
    c2c = train.copy()
    ctrl_rows = np.flatnonzero(lt == CONTROL)
    xc = xt.copy()
    xc[is_pert] = xt[rng.choice(ctrl_rows, is_pert.sum())]
    c2c.X = xc
    onehot = {p: np.eye(len(train_perts), dtype=np.float32)[i] for i, p in enumerate(train_perts)}
    for name, data, feats in [("biojepac (features)", train, None), ("biojepac (learned ID)", train, onehot),
                              ("biojepac (shuffled labels)", shuffled, None), ("biojepac (control->control)", c2c, None)]:
        t0 = time.perf_counter()
        model = BioJepacModel(cfg, feats).fit(data)
        pred = np.stack([model.predict(ctrl, p, "ctx0", 0).mean(0) - ctrl.mean(0) for p in test])
        rows.append({"model": name, **_score(pred, obs), "fit_s": round(time.perf_counter() - t0, 1)})
        print(rows[-1], flush=True)
    return rows
