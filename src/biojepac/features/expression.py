"""Expression-derived gene embeddings from the training screen itself.

- `make_pseudobulk_provider` (spec `expr`): Ahlmann-Eltze et al. (2025)'s gene embedding G. The
  training pseudobulk deltas (one log1p mean per perturbation x context condition, minus that context's
  control mean) form a genes x conditions matrix; each condition's column is centred over genes and the
  genes' top-K principal component scores (U S) are their vectors. A gene's row says how it responds
  across the training perturbations. As in the paper, a measured target gene's perturbation embedding is
  its row. (The paper's code takes the PCA of the pseudobulk expression itself; there the control
  profile, shared by every condition, spends a component without describing any response. On the
  synthetic benchmark tasks the deltas' G scored higher: benchmarks/results/features.md.)
- `make_expression_provider` (spec `expr-cells`): each gene's loadings on the top-K principal axes of
  the training cells (co-expression programmes across single cells).

Only measured genes get a vector, so an unmeasured target gene is listed as missing rather than given
zeros (combine with a knowledge source, e.g. `expr|go`, to cover it).
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
    return GeneTable(name=f"expr-cells-pca{loadings.shape[1]}", keys=tuple(map(str, train.var_names)),
                     matrix=loadings, source=source)


def pseudobulk_gene_embedding(delta_cg: np.ndarray, dim: int) -> np.ndarray:
    """G (genes x k): top-k PCA scores of the genes, each condition's column of `delta_cg`ᵀ centred over
    genes (R's `prcomp` on the genes x conditions matrix, as the paper's code does). Signs are fixed so
    each column's largest-magnitude entry is positive."""
    x_gc = np.asarray(delta_cg, np.float64).T
    x_gc = x_gc - x_gc.mean(0, keepdims=True)
    u, s, _ = np.linalg.svd(x_gc, full_matrices=False)
    k = int(min(dim, len(s)))
    g = u[:, :k] * s[:k]
    return g * np.sign(g[np.abs(g).argmax(0), np.arange(k)])


def make_pseudobulk_provider(train: ad.AnnData, dim: int = 10, source: str = "training pseudobulk") -> GeneTable:
    """Ahlmann-Eltze's G over `train`'s perturbation conditions; keys are `train.var_names`."""
    from biojepac.data.pairing import pseudobulk_deltas

    groups, deltas = pseudobulk_deltas(train)
    if len(groups) < 2 or train.n_vars < 2:
        raise InputError(f"{source}: need at least 2 perturbation conditions and 2 genes for the pseudobulk PCA, "
                         f"got {len(groups)} x {train.n_vars}")
    g = pseudobulk_gene_embedding(deltas, dim)
    return GeneTable(name=f"expr-pb{g.shape[1]}", keys=tuple(map(str, train.var_names)), matrix=g,
                     source=f"{source} ({len(groups)} conditions)")
