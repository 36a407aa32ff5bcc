"""Small random screens with real perturbation effects, for the evaluation tests."""

import anndata as ad
import pytest
import numpy as np
import pandas as pd
import scipy.sparse as sp

PERTS = ("non-targeting", "G003", "G007", "G011", "G015+G016", "NOEFFECT", "FEW")


def make_screen(
    seed: int,
    *,
    n_cells: int = 700,
    n_genes: int = 120,
    counts: bool = True,
    sparse: bool = True,
    effect_seed: int = 0,
    noise: float = 0.0,
) -> ad.AnnData:
    """Poisson counts with per-perturbation multiplicative effects (fixed by `effect_seed`).

    Includes all-zero genes, a perturbation with no effect, one with 3 cells, a combo label, targets that
    are gene names (PDS exclusion), integer ties everywhere, and (counts=False) log1p-normalised values.
    `noise` perturbs the effect sizes so a "prediction" differs from the truth.
    """
    rng = np.random.default_rng(seed)
    erng = np.random.default_rng(effect_seed)
    genes = [f"G{i:03d}" for i in range(n_genes)]
    base = erng.gamma(0.6, 3.0, size=n_genes)
    base[:4] = 0.0  # all-zero genes
    fold = np.ones((len(PERTS), n_genes))
    for i, pert in enumerate(PERTS[1:5], start=1):
        hit = erng.choice(n_genes, size=n_genes // 6, replace=False)
        fold[i, hit] = erng.choice([0.25, 3.0], size=len(hit)) * np.exp(rng.normal(0, noise, len(hit)))
        if pert in genes:
            fold[i, genes.index(pert)] = 0.05  # the knockdown itself
    weights = np.array([0.3] + [0.7 / 5] * 5 + [0.0])
    labels = rng.choice(len(PERTS), size=n_cells - 3, p=weights / weights.sum())
    labels = np.concatenate([labels, [len(PERTS) - 1] * 3])
    depth = rng.lognormal(0, 0.3, size=n_cells)
    x = rng.poisson(base[None, :] * fold[labels] * depth[:, None]).astype(np.float32)
    if not counts:
        x = np.log1p(x / x.sum(1, keepdims=True).clip(1) * 1e4).astype(np.float32)
    obs = pd.DataFrame({"target_gene": np.array(PERTS)[labels]}, index=[f"c{seed}_{i}" for i in range(n_cells)])
    return ad.AnnData(X=sp.csr_matrix(x) if sparse else x, obs=obs, var=pd.DataFrame(index=genes))


@pytest.fixture(scope="session")
def screen_factory():
    return make_screen
