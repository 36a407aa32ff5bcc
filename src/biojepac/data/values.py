"""What an expression matrix holds, decided once for every reader: counts vs log1p, and the size factors.

- `scan_values`: one chunked pass over a matrix giving the value facts validation and normalisation need.
  Works on dense arrays, scipy sparse matrices and AnnData's backed datasets (h5py dense or backed CSR)
  without densifying the whole matrix: rows are read in blocks, and for sparse blocks only the stored
  values (`.data`) are looked at, because implicit zeros are always valid.
- `is_fractional` and `classify`: the one counts-vs-log1p rule (cell-eval's `guess_is_lognorm` and its
  range check), used by `data.load`, `data.normalize`, `data.ooc`, `eval.inputs` and `submit`, some of
  which scan the values their own (faster or streamed) way.
- `target_sum` and `size_factors`: the arithmetic of scanpy's `normalize_total`, shared by every
  normaliser that does not call scanpy itself.
"""

import dataclasses
import typing

import numpy as np

from biojepac.errors import InputError

Kind = typing.Literal["counts", "log1p"]
"""What X holds."""

Expect = typing.Literal["auto", "counts", "log1p"]
"""What a caller says X holds; "auto" detects it (`classify`)."""

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
    import scipy.sparse as sp  # here: the rest of this module is used by evaluations that load scipy later
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
            hits = np.flatnonzero(is_fractional(np.where(finite, vals, 0)))
            if hits.size:
                fraction = BadValue(*locate(int(hits[0])), float(vals[hits[0]]))
    if implicit_zero or vmax == -np.inf:
        vmax, vmin = max(vmax, 0.0), min(vmin, 0.0)
    return ValueScan(max=vmax, min=vmin, nonfinite=nonfinite, negative=negative, fraction=fraction)


def is_fractional(vals: np.ndarray) -> np.ndarray:
    """Which (finite) values have a fractional part above `FRACTION_EPS`, compared in the values' own precision
    (a Python float against a float32 array compares in float32, as cell-eval's `np.modf(x) > eps` does)."""
    return vals - np.floor(vals) > FRACTION_EPS


def classify(max_value: float, integer_valued: bool, source: str, example: str = "", hint: str = "") -> Kind:
    """The one counts-vs-log1p rule, cell-eval's `guess_is_lognorm` and its range check, for every reader:
    - integer-valued (no value `is_fractional`; an all-zero matrix included) -> "counts";
    - fractional with a max below `MAX_LOG1P` (15: e^15 ~ 3.3M per cell) -> "log1p";
    - otherwise neither: an `InputError` naming `source`, `example` (a fractional value and where it is)
      and ending in `hint` (how to override, where the caller offers a way).
    Negative and non-finite values are the caller's to reject first; none of them is counts or log1p.
    """
    if integer_valued:
        return "counts"
    if max_value < MAX_LOG1P:
        return "log1p"
    eg = f" (e.g. {example})" if example else ""
    raise InputError(
        f"{source}: X is neither counts nor log1p: it has non-integer values{eg}, so not counts, and a max of "
        f"{max_value:.4g} >= {MAX_LOG1P}, so not log1p{'; ' + hint if hint else ''}"
    )


def detect_kind(x, source: str = "X") -> Kind:
    """Counts or log1p by `classify`, from one `scan_values` pass over `x` (cells x genes; dense, sparse or
    backed). NaN, inf and negative values are none of them and raise here, naming their row and column."""
    scan = scan_values(x)
    for bad, what in ((scan.nonfinite, "a NaN/inf"), (scan.negative, "a negative")):
        if bad is not None:
            raise InputError(f"{source}: X has {what} value {bad.value!r} at row {bad.row}, column {bad.col}")
    example = "" if scan.fraction is None else f"{scan.fraction.value!r} at row {scan.fraction.row}, column {scan.fraction.col}"
    return classify(scan.max, scan.fraction is None, source, example)


def target_sum(totals: np.ndarray, target: typing.Literal["median"] | float, source: str,
               median_over: typing.Literal["positive", "all"] = "positive") -> float:
    """The total every cell is scaled to: `target` itself, or the median of `totals` (per-cell counts).

    scanpy's `normalize_total` takes the median over the cells with counts on dense input and over all cells
    on CSR input without a fixed target (`median_over`); cell-eval's files go through the latter.
    """
    if target != "median":
        if not float(target) > 0:
            raise InputError(f"normalize target must be > 0, got {target!r}")
        return float(target)
    positive = totals[totals > 0]
    if positive.size == 0:
        raise InputError(f"{source}: every cell has zero total counts; cannot normalise")
    return float(np.median(positive if median_over == "positive" else totals))


def size_factors(totals: np.ndarray, target: float) -> np.ndarray:
    """Per-cell divisors `total / target` in the precision of `totals`, as scanpy's `normalize_total`
    computes them; 1 for cells without counts (scanpy leaves them as they are)."""
    assert np.issubdtype(totals.dtype, np.floating), f"totals must be floating point, got {totals.dtype}"
    factor = totals / totals.dtype.type(target)
    factor[factor == 0] = 1
    return factor
