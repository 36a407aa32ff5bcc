"""Another screen's measured responses as perturbation features (spec `screen:PATH`).

Ahlmann-Eltze et al. (2025) found that a linear model whose perturbation embeddings come from *another*
Perturb-seq screen beat every deep model. This provider turns a screen (a canonical `.h5ad`, counts or
log1p) into one vector per target gene:

1. pseudobulk delta of each single-gene perturbation against its own context's controls, averaged over
   the screen's contexts (combinations are left out: their effect is not one gene's);
2. genes put on current symbols (`data.genes`) on both sides; when the training screen is given and
   shares at least `MIN_SHARED` genes, only the shared genes are used, so the vectors describe responses
   on genes the model predicts;
3. PCA over perturbations (deltas centred per gene), K = `dim` components: a target's vector is its
   principal component scores (U S), the paper's perturbation embedding;
4. genes the screen measures but never perturbed also get a vector in the same coordinates: the response
   of a perturbation that moved only that gene by the screen's typical on-target change, V[g] x that
   change (the RMS on-target delta of the screen's measured targets; 1 if it measured none). A measured
   response always wins over this estimate.

Targets and genes keep their harmonised names as keys, so lookups match outdated symbols on either side.
"""

import pathlib

import anndata as ad
import numpy as np

from biojepac.data import schema
from biojepac.errors import InputError
from biojepac.features.base import GeneTable

MIN_SHARED = 10
"""Fewest genes shared with the training screen before the vectors are restricted to them."""


def screen_deltas(other: ad.AnnData) -> tuple[list[str], np.ndarray]:
    """(single-gene targets, deltas targets x genes averaged over contexts) of a log1p screen."""
    from biojepac.data.pairing import pseudobulk_deltas

    groups, deltas = pseudobulk_deltas(other)
    labels = groups[schema.PERT_COL].astype(str).to_numpy()
    single = np.asarray([schema.COMBO_SEP not in lab for lab in labels])
    targets, inv = np.unique(labels[single], return_inverse=True)
    if len(targets) < 2:
        raise InputError(f"{schema.source_name(other)}: needs at least 2 single-gene perturbations to use as features, "
                         f"found {len(targets)}")
    sums = np.zeros((len(targets), deltas.shape[1]))
    np.add.at(sums, inv, deltas[single])
    return targets.tolist(), sums / np.bincount(inv)[:, None]


def make_screen_provider(fpath: str | pathlib.Path, train: ad.AnnData | None = None, dim: int = 10) -> GeneTable:
    from biojepac.data.genes import load_symbols
    from biojepac.data.load import read_training_screen

    other = read_training_screen(fpath)
    targets, d_pg = screen_deltas(other)
    symbols = load_symbols()
    to_symbol = lambda names: [symbols.canonical(str(n)) or str(n) for n in names]
    genes = to_symbol(other.var_names)
    targets = to_symbol(targets)
    if len(set(targets)) < len(targets):
        raise InputError(f"{fpath}: two perturbation labels map to one current symbol; harmonise the screen first")
    keep = np.ones(len(genes), bool)
    if train is not None:
        ours = set(to_symbol(train.var_names))
        shared = np.asarray([g in ours for g in genes])
        if shared.sum() >= MIN_SHARED:
            keep = shared
    genes = [g for g, k in zip(genes, keep) if k]
    d_pg = d_pg[:, keep]
    dc = d_pg - d_pg.mean(0)
    u, s, vt = np.linalg.svd(dc, full_matrices=False)
    k = int(min(dim, len(s), len(targets) - 1))  # centring leaves rank n_targets - 1
    scores = u[:, :k] * s[:k]
    col = {g: j for j, g in enumerate(genes)}
    on_target = [d_pg[i, col[t]] for i, t in enumerate(targets) if t in col]
    size = float(np.sqrt(np.mean(np.square(on_target)))) if on_target else 1.0
    extra, seen = [], set(targets)  # a gene listed twice keeps its first column
    for j, g in enumerate(genes):
        if g not in seen:
            extra.append(j)
            seen.add(g)
    keys = tuple(targets) + tuple(genes[j] for j in extra)
    matrix = np.vstack([scores, vt[:k, extra].T * size])
    return GeneTable(name=f"screen-pca{k}:{pathlib.Path(fpath).name}", keys=keys, matrix=matrix,
                     source=f"{fpath}: {len(targets)} perturbations x {len(genes)} genes; "
                            f"{len(extra)} more genes by their loadings x on-target change {size:.3g}")
