"""Read and check the files an evaluation compares, once, at the boundary.

A `ScoredScreen` is one file reduced to what the metrics need: a log-normalised matrix (sparse or dense,
never modified in place: counts are normalised on a copy), one group code per cell and the gene names.
Counts vs log1p is decided by the project's one rule, `data.values.classify` (cell-eval's): a file whose
values are all integers is counts and is normalised with scanpy's `normalize_total` (to the median total;
`values.target_sum` and `values.size_factors`) and `log1p`; a file with fractional values must already be
log1p, in [0, 15). Only the scan is our own here: one compiled pass, for speed.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import TYPE_CHECKING

import numpy as np

from biojepac.data.schema import check_gene_names
from biojepac.data.values import FRACTION_EPS, classify, size_factors, target_sum
from biojepac.errors import InputError
from biojepac.eval.h5read import CSRArrays, Parts, is_sparse, read_parts
from biojepac.eval.kernels import kernel

if TYPE_CHECKING:  # scipy.sparse is loaded only for what a file's CSR arrays cannot do (`h5read.CSRArrays`)
    import anndata as ad
    import scipy.sparse as sp


@dataclasses.dataclass(frozen=True)
class ScoredScreen:
    """One file, log-normalised, with cells grouped by perturbation (group 0 is the control)."""

    name: str
    """Where it came from (file path or a label), used in error messages and the report."""
    x: sp.csr_matrix | CSRArrays | np.ndarray | None
    """Cells x genes, log1p-normalised, float32 or float64, CSR or dense, canonical (no duplicate entries).
    A CSR file read here stays `CSRArrays` (`h5read.is_sparse` tells CSR from dense without scipy). Never
    modified: it is either the caller's matrix, only read, or our own normalised copy. None once it is no
    longer needed."""
    codes: np.ndarray
    """Group per cell: 0 = control, 1..P = `perts[code - 1]`."""
    perts: np.ndarray
    """Sorted perturbation labels, control excluded."""
    genes: np.ndarray
    """Gene names in file order."""
    was_counts: bool
    """True when the file held integer counts and was normalised here."""

    @property
    def n_cells_per_group(self) -> np.ndarray:
        return np.bincount(self.codes, minlength=len(self.perts) + 1)


def read_scored_screen(
    src: ad.AnnData | str | pathlib.Path, *, pert_col: str, control: str, name: str = ""
) -> ScoredScreen:
    """Load (if a path), check columns/values and normalise counts on a copy."""
    return scored_screen(read_parts(src, pert_col, name), pert_col=pert_col, control=control)


def scored_screen(parts: Parts, *, pert_col: str, control: str) -> ScoredScreen:
    """`read_scored_screen` of parts already read (`h5read.read_parts`)."""
    name, labels, genes, x, owned = parts.name, parts.labels, parts.genes, parts.x, parts.owned
    check_gene_names(genes, name)
    blank = np.flatnonzero(np.char.strip(labels.astype(str)) == "")
    if blank.size:
        raise InputError(f"{name}: obs column {pert_col!r} is empty for cell {int(blank[0])} ({blank.size} such); "
                         "every cell needs a perturbation label")
    if control not in set(labels):
        raise InputError(f"{name}: no control cells labelled {control!r} in obs[{pert_col!r}]")
    perts, inverse = np.unique(labels, return_inverse=True)
    ctrl_idx = int(np.flatnonzero(perts == control)[0])
    # Control gets code 0; perturbations keep their sorted order as 1..P.
    codes = np.where(inverse == ctrl_idx, 0, inverse + (inverse < ctrl_idx)).astype(np.int64)
    x = _as_matrix(x, name)
    if is_sparse(x) and not _canonical(x, name, owned):  # duplicate entries add up, as in scipy
        if isinstance(x, CSRArrays):
            x = x.csr()
        elif not owned:
            x = x.copy()
        x.sum_duplicates()
        owned = True
    was_counts = not is_lognorm(x, name, labels=labels, genes=genes, pert_col=pert_col)
    if was_counts and is_sparse(x):  # normalised in place on our own copy: the caller's is never touched
        x = _normalize_counts_sparse(x if owned else x.copy(), name)
    elif was_counts:
        x = _normalize_counts_dense(x, name, copy=not owned)
    return ScoredScreen(name, x, codes, np.delete(perts, ctrl_idx), genes, was_counts)


def is_lognorm(x: sp.csr_matrix | CSRArrays | np.ndarray, name: str, *, labels=None, genes=None, pert_col: str = "") -> bool:
    """`values.classify` on one compiled pass over the stored values: True for log1p, False for counts.
    NaN, inf and negative values are refused in the same pass (an `InputError` naming the cell and gene)."""
    vals = (x.data if is_sparse(x) else x).reshape(-1)
    if vals.size == 0:
        return False
    vmax, negative, fractional, nonfinite = value_range(vals)
    if nonfinite:
        _refuse_nonfinite(x, vals, name, labels, genes, pert_col)
    if negative:
        pos = int(np.flatnonzero(vals < 0)[0])
        row, col = (int(np.searchsorted(x.indptr, pos, side="right") - 1), int(x.indices[pos])) if is_sparse(x) else divmod(pos, x.shape[1])
        where = f"cell {row}" + (f" ({pert_col} {str(labels[row])!r})" if labels is not None else "")
        where += f", gene {str(genes[col])!r}" if genes is not None else f", gene {col}"
        raise InputError(f"{name}: negative expression value {float(vals.min()):.3g} at {where}; expected counts or log1p")
    hint = "pass raw integer counts or log1p(normalised) values, not a mix"
    return classify(float(vmax), not fractional, name, hint=hint) == "log1p"


def warm_up() -> None:
    """Load the kernels now, with a tiny call: built ahead of time that takes milliseconds; compiled just in
    time, the first call spends about 0.5 s importing numba and its registries (holding the GIL), which
    overlaps well with file reads (system calls that release it) and stalls every thread otherwise."""
    value_range(np.zeros(1, np.float32))  # the first compiled call a read makes


def value_range(vals: np.ndarray) -> tuple[float, bool, bool, bool]:
    """(largest value, whether any is negative, whether any value's fractional part exceeds `FRACTION_EPS`
    (`values.is_fractional`), whether any is NaN or +-inf) of a 1-d array, in one compiled pass.

    Floats are scanned through their bit patterns (`_float_scan`): a maximum over floats cannot be
    vectorised (NaN has no place in the order), one over the integers that non-negative floats sort like
    can, which takes the pass from 70 to 32 ms on 49M float32 values. Integers are counts: no fractions.
    """
    if vals.dtype.kind != "f":
        return vals.max(), bool(vals.min() < 0), False, False
    bits = vals.view(np.int32 if vals.itemsize == 4 else np.int64)
    exponent = bits.dtype.type(0x7F800000 if vals.itemsize == 4 else 0x7FF0000000000000)
    top, negative, fractional, nonfinite = _float_scan(vals, bits, exponent, vals.dtype.type(FRACTION_EPS))
    return bits.dtype.type(top).view(vals.dtype), negative, fractional, nonfinite  # the largest when none is negative


@kernel
def _float_scan(vals, bits, exponent, eps):
    """(largest bit pattern, any negative, any fractional part > eps, any NaN or +-inf): `value_range`.
    A non-negative float's bit pattern, read as a signed integer, orders like the float; a negative one's
    is negative (-0.0's too, which is not negative: hence `v != 0`). All exponent bits set: NaN or inf."""
    top = bits[0]
    negative, fractional, nonfinite = False, False, False
    for i in range(len(vals)):
        v, b = vals[i], bits[i]
        top = max(top, b)
        negative |= (b < 0) & (v != 0)
        nonfinite |= (b & exponent) == exponent
        fractional |= v - np.floor(v) > eps  # modf's fractional part, for the values >= 0 that count
    return top, negative, fractional, nonfinite


def _refuse_nonfinite(x, vals: np.ndarray, name: str, labels, genes, pert_col: str) -> None:
    """Only on the error path: find the first NaN / inf and name its cell (row and label) and gene."""
    pos = int(np.flatnonzero(~np.isfinite(vals))[0])
    if is_sparse(x):
        row, col = int(np.searchsorted(x.indptr, pos, side="right") - 1), int(x.indices[pos])
    else:
        row, col = divmod(pos, x.shape[1])
    cell = f"cell {row}" + (f" ({pert_col} {str(labels[row])!r})" if labels is not None else "")
    gene = f"gene {str(genes[col])!r}" if genes is not None else f"gene {col}"
    raise InputError(f"{name}: non-finite value {float(vals[pos])} at {cell}, {gene}; "
                     "NaN and inf cannot be scored: fix or drop those cells")


def check_pair(real: ScoredScreen, other: ScoredScreen) -> None:
    """Same genes in the same order, and the same perturbation set."""

    def names(values) -> list[str]:  # plain str, so messages read 'G1' and not np.str_('G1')
        return sorted(map(str, values))[:5]

    if len(real.genes) != len(other.genes) or not np.array_equal(real.genes, other.genes):
        if set(real.genes) == set(other.genes):
            i = int(np.flatnonzero(real.genes != other.genes)[0])
            raise InputError(
                f"{other.name}: genes are in a different order than {real.name} "
                f"(position {i}: {str(other.genes[i])!r} vs {str(real.genes[i])!r}); reorder var to match"
            )
        missing, extra = names(set(real.genes) - set(other.genes)), names(set(other.genes) - set(real.genes))
        raise InputError(
            f"{other.name}: genes differ from {real.name} ({len(other.genes)} vs {len(real.genes)}; "
            f"missing e.g. {missing}, extra e.g. {extra})"
        )
    if not np.array_equal(real.perts, other.perts):
        missing, extra = names(set(real.perts) - set(other.perts)), names(set(other.perts) - set(real.perts))
        raise InputError(
            f"{other.name}: perturbations differ from {real.name} (missing e.g. {missing}, extra e.g. {extra})"
        )


def _as_matrix(x, name: str) -> sp.spmatrix | CSRArrays | np.ndarray:
    if x is None:
        raise InputError(f"{name}: X is empty")
    if isinstance(x, CSRArrays):  # read here: ours to convert in place
        if x.dtype == np.float16:
            x.data = x.data.astype(np.float32)
        return x
    if is_sparse(x):
        import scipy.sparse as sp

        x = x if isinstance(x, sp.csr_matrix) else sp.csr_matrix(x)  # one layout: cells are rows
    else:
        x = np.asarray(x)
    dtype = x.dtype
    if dtype == np.float16:
        x = x.astype(np.float32)  # as cell-eval does; numpy sorts float16 fine but means lose precision
    return x


def _canonical(x: sp.csr_matrix | CSRArrays, name: str, owned: bool) -> bool:
    """scipy's `has_canonical_format` (every row's gene indices strictly increasing), in one compiled pass
    that also checks that the index arrays describe a matrix of this shape: a malformed file gets an
    error instead of reads and writes out of bounds. Our own matrix (`owned`) keeps the answer, as scipy
    would: later steps need not check again."""
    n_rows, n_cols = x.shape
    ordered, lowest, highest = _csr_order(x.indptr, x.indices)
    if ordered == 0 and x.nnz:  # unsorted rows: their ends are not their extremes
        lowest, highest = x.indices.min(), x.indices.max()
    ends = len(x.indptr) == n_rows + 1 and x.indptr[0] == 0 and x.indptr[-1] == len(x.indices) == len(x.data)
    if not ends or ordered < 0 or lowest < 0 or highest >= n_cols:
        raise InputError(f"{name}: X is not a valid CSR matrix of {n_rows} cells x {n_cols} genes (its indptr "
                         f"must rise from 0 to {len(x.indices)}, its gene indices lie in 0..{n_cols - 1}); "
                         "rewrite the file with anndata")
    if owned:
        x.has_canonical_format = bool(ordered)
    return bool(ordered)


@kernel
def _csr_order(indptr, indices):
    """(1 if every row's indices strictly increase, 0 if not, -1 if indptr decreases somewhere; the smallest
    of the rows' first indices; the largest of their last). Rows are sliced, so the comparisons vectorise
    (20 ms for 49M entries; scipy's check takes 46)."""
    ordered, lowest, highest = True, 0, 0
    for r in range(len(indptr) - 1):
        if indptr[r] > indptr[r + 1]:
            return -1, lowest, highest
        row = indices[indptr[r] : indptr[r + 1]]
        for j in range(1, len(row)):
            ordered &= row[j - 1] < row[j]
        if len(row):
            lowest, highest = min(lowest, row[0]), max(highest, row[-1])
    return int(ordered), lowest, highest


def _normalize_counts_sparse(x: sp.csr_matrix | CSRArrays, name: str) -> sp.csr_matrix | CSRArrays:
    """scanpy's `normalize_total` (median target) + `log1p`, in place on our own CSR copy.

    Same float operations as scanpy 1.11's CSR path, so bit-identical to what cell-eval does in place
    (checked in tests): per-cell totals summed in float64 in entry order, target = median over all cells,
    values divided by total/target in the matrix dtype (compiled: division is exactly rounded either
    way), then numpy's log1p. Avoids importing scanpy (slow).
    """
    if np.issubdtype(x.dtype, np.integer):
        x.data = x.data.astype(np.float32)
    totals = row_totals(x.indptr, x.data).astype(x.data.dtype)
    scale = size_factors(totals, target_sum(totals, "median", name, median_over="all"))
    _divide_rows(x.indptr, x.data, scale)
    np.log1p(x.data, out=x.data)
    return x


@kernel
def row_totals(indptr, data):
    """Sum of each CSR row's stored values (float64, added in entry order), one compiled pass. Four rows
    are summed side by side as far as the shortest goes: four chains of additions in flight instead of
    one, each addition waiting for the last (36-48 instead of 62 ms for 49M values)."""
    n = len(indptr) - 1
    out = np.zeros(n)
    for r in range(0, n - n % 4, 4):
        a0, a1, a2, a3 = indptr[r], indptr[r + 1], indptr[r + 2], indptr[r + 3]
        common = min(a1 - a0, a2 - a1, a3 - a2, indptr[r + 4] - a3)
        t0 = t1 = t2 = t3 = 0.0
        for k in range(common):
            t0 += data[a0 + k]
            t1 += data[a1 + k]
            t2 += data[a2 + k]
            t3 += data[a3 + k]
        out[r], out[r + 1], out[r + 2], out[r + 3] = t0, t1, t2, t3
        for i in range(r, r + 4):  # each row's entries past the shortest, still in order
            for j in range(indptr[i] + common, indptr[i + 1]):
                out[i] += data[j]
    for i in range(n - n % 4, n):
        for j in range(indptr[i], indptr[i + 1]):
            out[i] += data[j]
    return out


@kernel
def _divide_rows(indptr, data, scale):
    """Each row's values divided by its scale. Each row is sliced first: a loop over positions from 0 needs
    no negative-index handling, and vectorises (19 instead of 56 ms for 49M values)."""
    for r in range(len(indptr) - 1):
        row = data[indptr[r] : indptr[r + 1]]
        for j in range(len(row)):
            row[j] = row[j] / scale[r]


def _normalize_counts_dense(x: np.ndarray, name: str, copy: bool) -> np.ndarray:
    """As above for dense input (scanpy's dense path: median over cells with counts > 0)."""
    x = x.astype(np.float32) if np.issubdtype(x.dtype, np.integer) else (x.copy() if copy else x)
    totals = x.sum(axis=1)
    scale = size_factors(totals, target_sum(totals, "median", name))
    np.true_divide(x, scale[:, None], out=x)
    np.log1p(x, out=x)
    return x


def make_baseline_screen(train_means: np.ndarray, real: ScoredScreen) -> ScoredScreen:
    """cell-eval's cell-mean baseline as a ScoredScreen: the unweighted mean over the training groups' means
    (control group included, as cell-eval's `_build_pert_baseline` does) given to every cell of every
    real perturbation, plus the real control cells.

    `train_means` is (groups x genes), log1p, from `stats.summarize(train)`. The matrix is float32 when the
    real file is (cell-eval's baseline of float32 data is float32 too), which also halves its memory.
    """
    dtype = np.float32 if real.x.dtype == np.float32 else np.float64
    baseline = train_means.mean(axis=0).astype(dtype)
    ctrl_rows = np.flatnonzero(real.codes == 0)
    ctrl_x = real.x[ctrl_rows]
    ctrl_x = ctrl_x.toarray() if is_sparse(ctrl_x) else np.asarray(ctrl_x)
    n_pert_cells = int((real.codes > 0).sum())
    x = np.concatenate([ctrl_x.astype(dtype), np.broadcast_to(baseline, (n_pert_cells, len(baseline)))])
    codes = np.concatenate([np.zeros(len(ctrl_rows), np.int64), np.sort(real.codes[real.codes > 0])])
    return ScoredScreen("cell-mean baseline", x, codes, real.perts, real.genes, was_counts=False)
