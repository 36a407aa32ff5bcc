"""Control pairing (the one rule, `control_slices`) and pseudobulk: group means and deltas without
densifying the cell matrix.

Pseudobulk means are one sparse product: a (groups x cells) indicator matrix with 1/n weights times X.
That works unchanged for CSR and dense X, and row chunk by row chunk for backed files.
"""

import dataclasses
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
    groups, codes = group_codes(adata.obs, keys)
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


@dataclasses.dataclass(frozen=True)
class ControlSlices:
    """Every cell's control pool as a contiguous slice of one sorted array of control rows.

    Cell `i` draws from `order[offset[i] : offset[i] + count[i]]` (controls included: a control's pool is its
    own context and batch, itself among them).
    """

    order: np.ndarray
    """Row indices of the control cells, sorted by (context, batch) and then by row."""
    offset: np.ndarray
    """Per cell: where its pool starts in `order`."""
    count: np.ndarray
    """Per cell: its pool's size (> 0)."""
    same_batch: np.ndarray
    """Per cell: True when the pool is its own (context, batch); False when that batch has no controls."""

    def draw(self, cells: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Control rows for `cells` from uniform numbers `u` in [0, 1) (any shape broadcasting with `cells`)."""
        return self.order[self.offset[cells] + np.floor(u * self.count[cells]).astype(np.int64)]


def control_slices(context, batch, is_control: np.ndarray, source: str) -> ControlSlices:
    """The one control-pairing rule, for every trainer and the stream loader.

    A cell (perturbed or control) draws its controls from the same context AND batch; when that batch has no
    controls, from every control of the same context, with a warning naming the batch and the context;
    never across contexts: a context without controls is an `InputError` naming `source` and the context.

    `context` and `batch` are per-cell labels (arrays, pandas Series or Categoricals; a Categorical's codes
    are used as they are, so millions of cells need no strings). Because controls are sorted by (context,
    batch), each (context, batch) pool and each whole-context pool is one contiguous slice of `order`.
    """
    ctx_names, ctx = _label_codes(context)
    bat_names, bat = _label_codes(batch)
    is_control = np.asarray(is_control, dtype=bool)
    assert len(ctx) == len(bat) == len(is_control), "one context, batch and control flag per cell"
    n_ctx, n_bat = max(len(ctx_names), 1), max(len(bat_names), 1)
    cb = ctx.astype(np.int64) * n_bat + bat  # (context, batch) as one code, in (context, batch) order
    order = np.flatnonzero(is_control)
    order = order[np.argsort(cb[order], kind="stable")]
    cb_count = np.bincount(cb[order], minlength=n_ctx * n_bat)
    ctx_count = cb_count.reshape(n_ctx, n_bat).sum(1)
    lacking = np.flatnonzero((ctx_count == 0) & (np.bincount(ctx, minlength=n_ctx) > 0))
    if lacking.size:
        raise InputError(f"{source}: no {schema.CONTROL!r} cells in context {str(ctx_names[lacking[0]])!r} "
                         f"(column {schema.CONTEXT_COL!r}); its cells have no controls to pair with")
    cb_start = np.concatenate([[0], np.cumsum(cb_count)[:-1]])
    ctx_start = cb_start.reshape(n_ctx, n_bat)[:, 0]
    same_batch = cb_count[cb] > 0
    for code in np.unique(cb[~same_batch]):
        c, b = divmod(int(code), n_bat)
        warnings.warn(f"{source}: batch {str(bat_names[b])!r} of context {str(ctx_names[c])!r} has no {schema.CONTROL!r} "
                      f"cells; pairing its cells with controls from every batch of {str(ctx_names[c])!r}", stacklevel=2)
    offset, count = cb_start[cb], cb_count[cb]
    fallback = np.flatnonzero(~same_batch)
    offset[fallback], count[fallback] = ctx_start[ctx[fallback]], ctx_count[ctx[fallback]]
    return ControlSlices(order, offset, count, same_batch)


def pair_controls(adata: ad.AnnData, seed: int) -> np.ndarray:
    """For each cell, the row index of a random control cell by `control_slices`' rule; -1 for controls."""
    obs = adata.obs
    for col in (schema.PERT_COL, schema.CONTEXT_COL, schema.BATCH_COL):
        if col not in obs.columns:
            raise InputError(f"{schema.source_name(adata)}: obs has no column {col!r} needed to pair controls")
    is_ctrl = (obs[schema.PERT_COL] == schema.CONTROL).to_numpy()
    pools = control_slices(obs[schema.CONTEXT_COL], obs[schema.BATCH_COL], is_ctrl, schema.source_name(adata))
    pert_idx = np.flatnonzero(~is_ctrl)
    paired = np.full(adata.n_obs, -1, dtype=np.int64)
    paired[pert_idx] = pools.draw(pert_idx, np.random.default_rng(seed).random(len(pert_idx)))
    return paired


def _label_codes(labels) -> tuple[np.ndarray, np.ndarray]:
    """(names sorted as strings, code per cell: int32, 4 bytes a cell) of a label column."""
    if isinstance(labels, pd.Series):
        labels = labels.array if isinstance(labels.dtype, pd.CategoricalDtype) else labels.to_numpy()
    if isinstance(labels, pd.Categorical):
        names = np.asarray(labels.categories.astype(str))
        assert (labels.codes >= 0).all(), "labels have no missing values"
        rank = np.empty(len(names), np.int32)
        rank[np.argsort(names, kind="stable")] = np.arange(len(names))
        return np.sort(names, kind="stable"), rank[labels.codes]
    names, codes = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    return names, codes.astype(np.int32).ravel()


def group_codes(obs: pd.DataFrame, keys: tuple[str, ...]) -> tuple[pd.DataFrame, np.ndarray]:
    """Sorted unique key combinations and each cell's group code (also `ooc`'s pseudobulk groups)."""
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


