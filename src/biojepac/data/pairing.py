"""Control pairing and pseudobulk: group means and deltas without densifying the cell matrix.

Pseudobulk means are one sparse product: a (groups x cells) indicator matrix with 1/n weights times X.
That works unchanged for CSR and dense X, and row chunk by row chunk for backed files.
"""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from biojepac.data import schema
from biojepac.errors import InputError

BACKED_CHUNK_ROWS = 8192
"""Rows read per chunk from a backed file."""


def pseudobulk(
    adata: ad.AnnData, keys: tuple[str, ...] = (schema.CONTEXT_COL, schema.PERT_COL), layer: str | None = None
) -> tuple[pd.DataFrame, np.ndarray]:
    """Mean expression per group of `keys`: (table of keys + `n_cells`, float64 means groups x genes).

    Groups are the observed key combinations, sorted by key. Means are in whatever space X (or `layer`)
    holds; call this on log1p-normalised data for the usual pseudobulk.
    """
    missing = [k for k in keys if k not in adata.obs.columns]
    if missing:
        raise InputError(f"{schema.source_name(adata)}: obs has no column {missing[0]!r} to group by")
    groups, codes = _group_codes(adata.obs, keys)
    n_cells = np.bincount(codes, minlength=len(groups))
    weights = 1.0 / n_cells[codes]
    indicator = sp.csr_matrix((weights, (codes, np.arange(len(codes)))), shape=(len(groups), len(codes)))
    x = adata.layers[layer] if layer is not None else adata.X
    if adata.isbacked and layer is None:
        means = np.zeros((len(groups), adata.n_vars))
        indicator = indicator.tocsc()  # column (cell) slices are cheap in CSC
        for start in range(0, adata.n_obs, BACKED_CHUNK_ROWS):
            stop = min(start + BACKED_CHUNK_ROWS, adata.n_obs)
            means += _dense(indicator[:, start:stop] @ _as_matrix(x[start:stop]))
    else:
        means = _dense(indicator @ _as_matrix(x))
    groups = groups.assign(n_cells=n_cells)
    return groups, means


def pseudobulk_deltas(
    adata: ad.AnnData, keys: tuple[str, ...] = (schema.CONTEXT_COL, schema.PERT_COL), layer: str | None = None
) -> tuple[pd.DataFrame, np.ndarray]:
    """Group means minus the mean of all control cells of the same context; control groups are dropped.

    Returns (table of keys + `n_cells` for the perturbed groups, float64 deltas groups x genes). Without a
    context column in `keys`, the reference is the mean over all controls.
    """
    assert schema.PERT_COL in keys, f"keys must include {schema.PERT_COL!r}, got {keys}"
    groups, means = pseudobulk(adata, keys, layer)
    is_ctrl = (groups[schema.PERT_COL] == schema.CONTROL).to_numpy()
    if not is_ctrl.any():
        raise InputError(f"{schema.source_name(adata)}: no {schema.CONTROL!r} cells in column {schema.PERT_COL!r}")
    # The control groups' means, weighted by their cell counts, give each context's mean over all its controls.
    if schema.CONTEXT_COL in keys:
        ctx = groups[schema.CONTEXT_COL].to_numpy()
        absent = sorted(set(ctx) - set(ctx[is_ctrl]))
        if absent:
            raise InputError(f"{schema.source_name(adata)}: no {schema.CONTROL!r} cells in context {absent[0]!r} (column {schema.CONTEXT_COL!r})")
        ctx_names, ref_rows = np.unique(ctx, return_inverse=True)
    else:
        ctx_names, ref_rows = np.array(["all"]), np.zeros(len(groups), dtype=np.int64)
    w = np.where(is_ctrl, groups["n_cells"].to_numpy(), 0).astype(np.float64)
    onehot = sp.csr_matrix((w, (ref_rows, np.arange(len(groups)))), shape=(len(ctx_names), len(groups)))
    ctrl_means = (onehot @ means) / onehot.sum(axis=1).A
    deltas = means - ctrl_means[ref_rows]
    return groups[~is_ctrl].reset_index(drop=True), deltas[~is_ctrl]


def pair_controls(adata: ad.AnnData, seed: int) -> np.ndarray:
    """For each cell, the row index of a random control cell of the same context and batch; -1 for controls.

    When a (context, batch) has no controls, its cells draw from every control of the context instead,
    with a warning naming the batch. A context with no controls at all is an `InputError`.
    """
    obs = adata.obs
    for col in (schema.PERT_COL, schema.CONTEXT_COL, schema.BATCH_COL):
        if col not in obs.columns:
            raise InputError(f"{schema.source_name(adata)}: obs has no column {col!r} needed to pair controls")
    is_ctrl = (obs[schema.PERT_COL] == schema.CONTROL).to_numpy()
    ctx = obs[schema.CONTEXT_COL].astype(str).to_numpy()
    batch = obs[schema.BATCH_COL].astype(str).to_numpy()
    no_ctrl_ctx = sorted(set(ctx) - set(ctx[is_ctrl]))
    if no_ctrl_ctx:
        raise InputError(f"{schema.source_name(adata)}: no {schema.CONTROL!r} cells in context {no_ctrl_ctx[0]!r} (column {schema.CONTEXT_COL!r})")

    # Each perturbed cell gets a pool key: its (context, batch) if that batch has controls, else its context.
    ctx_batch = np.char.add(np.char.add(ctx.astype(str), "\x1f"), batch.astype(str))
    has_ctrl = np.isin(ctx_batch, ctx_batch[is_ctrl])
    for cb in sorted(set(ctx_batch[~has_ctrl])):
        c, b = cb.split("\x1f")
        warnings.warn(f"{schema.source_name(adata)}: batch {b!r} of context {c!r} has no {schema.CONTROL!r} cells; pairing with controls from any batch of {c!r}")
    pool_of_cell = np.where(has_ctrl, ctx_batch, ctx)
    # Controls belong to both their (context, batch) pool and their context pool.
    ctrl_idx = np.flatnonzero(is_ctrl)
    pool_keys = np.concatenate([ctx_batch[ctrl_idx], ctx[ctrl_idx]])
    pool_members = np.concatenate([ctrl_idx, ctrl_idx])
    sort = np.argsort(pool_keys, kind="stable")
    pool_keys, pool_members = pool_keys[sort], pool_members[sort]
    uniq, start, count = np.unique(pool_keys, return_index=True, return_counts=True)

    pert_idx = np.flatnonzero(~is_ctrl)
    pos = np.searchsorted(uniq, pool_of_cell[pert_idx])
    draw = np.random.default_rng(seed).integers(0, count[pos])
    paired = np.full(adata.n_obs, -1, dtype=np.int64)
    paired[pert_idx] = pool_members[start[pos] + draw]
    return paired


def _group_codes(obs: pd.DataFrame, keys: tuple[str, ...]) -> tuple[pd.DataFrame, np.ndarray]:
    """Sorted unique key combinations and each cell's group code."""
    frame = obs[list(keys)].astype(str)
    groups = frame.drop_duplicates().sort_values(list(keys)).reset_index(drop=True)
    lookup = pd.MultiIndex.from_frame(groups)
    codes = lookup.get_indexer(pd.MultiIndex.from_frame(frame))
    assert (codes >= 0).all(), "every cell belongs to a group"
    return groups, codes


def _as_matrix(x):
    """Backed sparse slices and h5py arrays as something scipy can multiply."""
    if sp.issparse(x) or isinstance(x, np.ndarray):
        return x
    return np.asarray(x)


def _dense(m) -> np.ndarray:
    return np.asarray(m.toarray() if sp.issparse(m) else m, dtype=np.float64)


