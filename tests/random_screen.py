"""A small random canonical screen for tests (importable from any test folder: tests/ is on pythonpath)."""

import numpy as np


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


def make_shift_screen(n_genes: int = 12, seed: int = 0):
    """Controls ~ N(2, 0.3); perturbation "A" adds +1.5 to genes 0-2, "B" subtracts 1 from genes 3-5."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    shifts = {"non-targeting": np.zeros(n_genes), "A": np.r_[1.5, 1.5, 1.5, np.zeros(n_genes - 3)],
              "B": np.r_[0, 0, 0, -1.0, -1.0, -1.0, np.zeros(n_genes - 6)]}
    labels = np.repeat(list(shifts), [120, 60, 60])
    x = 2.0 + 0.3 * rng.normal(size=(len(labels), n_genes)) + np.stack([shifts[lab] for lab in labels])
    obs = pd.DataFrame({"target_gene": labels, "context": "c1", "batch": "b0", "pert_type": "CRISPRi"},
                       index=[f"cell{i}" for i in range(len(labels))])
    return ad.AnnData(X=x.clip(0).astype(np.float32), obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]))
