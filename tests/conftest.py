"""Shared test fixtures: the real shared data folder (skipped when absent) and a small random screen."""

import os
import pathlib

import numpy as np
import pytest

# Tests must never grab every core or a GPU; keep JAX on the CPU unless a test says otherwise.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO_DPATH = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA_DPATH = REPO_DPATH.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dpath() -> pathlib.Path:
    """`../shared/data` beside the repo; tests that need it skip cleanly in a user's clone."""
    if not SHARED_DATA_DPATH.is_dir():
        pytest.skip(f"real data folder not found: {SHARED_DATA_DPATH}")
    return SHARED_DATA_DPATH


def build_random_screen(
    n_cells: int = 300,
    n_genes: int = 40,
    n_perts: int = 5,
    contexts: tuple[str, ...] = ("c1",),
    seed: int = 0,
    counts: bool = True,
):
    """A random canonical screen: Poisson counts, `non-targeting` controls, 2 batches per context."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    genes = [f"G{i:03d}" for i in range(n_genes)]
    perts = ["non-targeting"] + genes[:n_perts]
    labels = rng.choice(perts, size=n_cells)
    labels[: len(perts)] = perts  # every label present
    ctx = rng.choice(list(contexts), size=n_cells)
    rate = rng.gamma(2.0, 2.0, size=n_genes)
    x = rng.poisson(rate, size=(n_cells, n_genes)).astype(np.float32)
    if not counts:
        x = np.log1p(x / x.sum(1, keepdims=True).clip(1) * 1e4).astype(np.float32)
    obs = pd.DataFrame(
        {
            "target_gene": labels,
            "context": ctx,
            "batch": rng.choice(["b0", "b1"], size=n_cells),
            "pert_type": "CRISPRi",
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    return ad.AnnData(X=sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=genes))


@pytest.fixture
def random_screen():
    return build_random_screen()
