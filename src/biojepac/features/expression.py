"""Expression-derived gene embeddings: PCA loadings of genes in the training cells.

As in Ahlmann-Eltze et al. (2025), a gene's row of the top-K principal axes of the training
expression matrix says which co-expression programmes it belongs to; perturbing a gene tends to move
the programmes it loads on. Only measured genes get a vector, so an unmeasured target gene is listed as
missing rather than given zeros.
"""

import dataclasses

import anndata as ad
import numpy as np

from biojepac.errors import InputError
from biojepac.features.base import GeneTable
from biojepac.features.svd import as_csr, truncated_svd


@dataclasses.dataclass(frozen=True)
class ExpressionConfig:
    dim: int = 32
    """Number of principal components kept."""
    max_cells: int = 50_000
    """Cells sampled (seeded) for the PCA; loadings stabilise long before atlas size."""
    scale_by_singular_value: bool = True
    """Loadings times singular values (gene rows of the PCA projection), so strong programmes weigh more."""
    seed: int = 0
    """Seed for cell sampling and the randomized SVD."""


def make_expression_provider(train: ad.AnnData, cfg: ExpressionConfig, source: str = "training cells") -> GeneTable:
    """Gene x K loadings from the (log1p) training cells; keys are `train.var_names`."""
    if train.n_obs < 2 or train.n_vars < 2:
        raise InputError(f"{source}: need at least 2 cells and 2 genes for expression PCA, got {train.shape}")
    rng = np.random.default_rng(cfg.seed)
    rows = np.sort(rng.choice(train.n_obs, size=min(cfg.max_cells, train.n_obs), replace=False))
    x = as_csr(train.X[rows] if not train.isbacked else train[rows].to_memory().X).astype(np.float64)
    _, s, vt = truncated_svd(x, cfg.dim, seed=cfg.seed, center=True)
    # Relative to the largest singular value, so the scale does not depend on the number of cells.
    loadings = vt.T * (s / max(float(s[0]), 1e-12)) if cfg.scale_by_singular_value else vt.T
    return GeneTable(name=f"expr-pca{loadings.shape[1]}", keys=tuple(map(str, train.var_names)),
                     matrix=loadings, source=source)
