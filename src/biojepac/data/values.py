"""One chunked pass over an expression matrix: the value facts that validation and normalisation need.

Works on dense arrays, scipy sparse matrices and AnnData's backed datasets (h5py dense or backed CSR)
without densifying the whole matrix: rows are read in blocks, and for sparse blocks only the stored
values (`.data`) are looked at, because implicit zeros are always valid.
"""

import dataclasses
import typing

import numpy as np
import scipy.sparse as sp

Expect = typing.Literal["auto", "counts", "log1p"]
"""What a caller says X holds; "auto" detects it (`ValueScan.kind`)."""

FRACTION_EPS = 1e-3
"""A value is 'non-integer' when its fractional part exceeds this (the same tolerance cell-eval uses)."""

MAX_LOG1P = 15.0
"""Decimal data with values at or above this is neither counts nor log1p (cell-eval uses the same bound)."""


@dataclasses.dataclass(frozen=True)
class BadValue:
    """The first offending entry found: its row, column and value."""

    row: int
    col: int
    value: float


@dataclasses.dataclass(frozen=True)
class ValueScan:
    """What one pass over the matrix found."""

    max: float
    """Largest value (0 for an all-zero matrix)."""
    min: float
    """Smallest value, implicit sparse zeros included."""
    nonfinite: BadValue | None
    """First NaN or +-inf, or None."""
    negative: BadValue | None
    """First negative value, or None."""
    fraction: BadValue | None
    """First value with a fractional part > `FRACTION_EPS`, or None (then the matrix is integer-valued)."""


def scan_values(x, chunk_rows: int = 4096) -> ValueScan:
    """Scan `x` (cells x genes) block by block and return the first bad entries plus min/max."""
    n_rows, n_cols = x.shape
    vmax, vmin = -np.inf, np.inf
    nonfinite = negative = fraction = None
    implicit_zero = False
    for r0 in range(0, n_rows, chunk_rows):
        block = x[r0 : r0 + chunk_rows]
        if sp.issparse(block):
            block = sp.csr_matrix(block)
            vals = np.asarray(block.data)
            implicit_zero |= block.nnz < block.shape[0] * block.shape[1]

            def locate(k, block=block):
                return r0 + int(np.searchsorted(block.indptr, k, side="right") - 1), int(block.indices[k])
        else:
            block = np.asarray(block)
            vals = block.ravel()

            def locate(k, block=block):
                r, c = np.unravel_index(k, block.shape)
                return r0 + int(r), int(c)

        if vals.size == 0:
            continue
        finite = np.isfinite(vals)
        if nonfinite is None and not finite.all():
            k = int(np.argmin(finite))
            nonfinite = BadValue(*locate(k), float(vals[k]))
        fvals = vals[finite] if nonfinite is not None else vals
        if fvals.size == 0:
            continue
        vmax, vmin = max(vmax, float(fvals.max())), min(vmin, float(fvals.min()))
        if negative is None and vmin < 0:
            k = int(np.flatnonzero(finite & (vals < 0))[0])
            negative = BadValue(*locate(k), float(vals[k]))
        if fraction is None:
            frac = np.where(finite, vals - np.floor(np.where(finite, vals, 0)), 0.0)
            hits = np.flatnonzero(frac > FRACTION_EPS)
            if hits.size:
                fraction = BadValue(*locate(int(hits[0])), float(vals[hits[0]]))
    if implicit_zero or vmax == -np.inf:
        vmax, vmin = max(vmax, 0.0), min(vmin, 0.0)
    return ValueScan(max=vmax, min=vmin, nonfinite=nonfinite, negative=negative, fraction=fraction)
