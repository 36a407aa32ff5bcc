"""Mann-Whitney U of every perturbation against the control, for every gene at once, plus BH FDR.

Matches pdex (cell-eval's DE library) as cell-eval calls it: two-sided, asymptotic normal approximation,
tie-corrected variance, continuity correction 0.5, and p = 1 when every value is tied.

How it works (`group_stats`), in compiled (numba) passes over the non-zero entries; zeros dominate
single-cell data and are all tied, so they are handled in closed form.
1. Genes are cut into ranges of about RANGE_KEYS entries. For one range, `_csr_range_keys` turns each
   entry into one integer key, (gene within its block, value key, group) from high bits to low, the control
   being group 0, and writes it into its block of 2**lbits genes (a counting sort over the cells: no
   transposed copy of the matrix). Non-negative float32 values sort like their bit patterns. Keys are int32
   when they fit in 31 bits (then blocks are mostly single genes), else int64.
2. Each block is sorted with numpy's sort (vectorised quicksort; it releases the GIL), so that a gene's
   entries come by (value, group).
3. `_scan`: one walk over each gene's sorted entries. A run of equal values holding `a` control
   cells and, per perturbation p, `b` cells of p adds to U(p)

       b * (control non-zeros below the run + a / 2)

   and the tie term of pdex's variance, sum over tie groups of (t^3 - t) in (p + control), is

       ties(p) = sum over runs of (a^3 - a) + sum over p's runs of ((a+b)^3 - a^3 - b) + (z^3 - z)

   with z = z_p + z_c the zeros of p and of the control; U(p) gains z_c for each non-zero of p (every
   control zero lies below it) and z_p * z_c / 2 for the tied zeros. All terms are integers or halves, so
   U and the tie term equal pdex's bit for bit whatever the summation order. The walk also sums each
   group's values and squares, so the means come with the p-values.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
from typing import TYPE_CHECKING

import numpy as np

from biojepac.eval import cephes
from biojepac.eval.h5read import CSRArrays, is_sparse, prefaulted
from biojepac.eval.kernels import kernel

if TYPE_CHECKING:
    import scipy.sparse as sp
    from jaxtyping import Float

KEY32_BITS = 31
"""Keys that fit in this many bits are int32 (half the memory traffic, and numpy sorts them twice as fast)."""
BLOCK_KEYS = 1 << 15
"""At most about this many keys per block of genes, so that a block is sorted within the cache."""
RANGE_KEYS = 1 << 22
"""Keys per range of genes (16 or 32 MiB): the memory each thread writes keys into, reused range after range."""


@dataclasses.dataclass(frozen=True)
class GroupStats:
    """Per (group, gene) results; row 0 is the control."""

    sums: np.ndarray
    """Sum of the values, (groups x genes), float64."""
    sumsq: np.ndarray
    """Sum of the squared values, (groups x genes), float64."""
    pval: np.ndarray
    """Two-sided Mann-Whitney p-value of each perturbation vs the control, (perts x genes)."""


class Workers:
    """Threads that sort ranges of genes, each with scratch memory of its own. One set can serve several
    files summarised at the same time, so that their ranges share the cores instead of oversubscribing them."""

    def __init__(self, n_threads: int):
        self.pool = concurrent.futures.ThreadPoolExecutor(max(1, n_threads))
        self.local = threading.local()

    def scratch(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """This thread's buffer `name` as an uninitialised array of `shape` and `dtype`, its memory kept from
        call to call. Fresh memory costs a page fault per 4 KiB page (1.7 us each on the 2-core VM we measure
        on), so a buffer grows with room to spare: ranges differ by a gene or two, and allocating for each
        larger one faulted 128 MB of key buffers in an evaluation instead of 36."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        buffers = self.local.__dict__.setdefault("buffers", {})
        buf = buffers.get(name)
        if buf is None or len(buf) < nbytes:
            buffers[name] = buf = prefaulted((nbytes + nbytes // 8,), np.uint8)
        return buf[:nbytes].view(dtype).reshape(shape)

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown()


def group_stats(x: sp.spmatrix | np.ndarray, codes: np.ndarray, n_per_group: np.ndarray,
                workers: Workers | int = 1) -> GroupStats:
    """Sums, sums of squares and p-values of groups 1..P vs group 0 for a cells x genes matrix (CSR with
    sorted indices, or dense), which is only read.

    Genes are cut into ranges of about RANGE_KEYS non-zero entries, each a task for `workers` (threads of
    their own if a number; the compiled loops release the GIL). A task writes its range's keys into its
    thread's buffer, sorts each block, walks them (`_scan`) and turns its genes' statistics into p-values
    (`_pvalues`), so memory is a buffer per thread, never a key per entry, and no serial step follows the
    last range.
    """
    if isinstance(workers, int):
        with Workers(workers) as own:
            return group_stats(x, codes, n_per_group, own)
    n_groups, n_genes = len(n_per_group), x.shape[1]
    csr = is_sparse(x)
    if csr:
        x = x if x.format == "csr" else x.tocsr()
        x = x if x.has_sorted_indices else x.sorted_indices()  # a copy: the caller's matrix is only read
    vkey, table = _value_key(x.data if csr else x.reshape(-1))
    vkey = vkey if csr else vkey.reshape(x.shape)
    gbits = max(int(n_groups - 1).bit_length(), 1)
    ptr, vmin, vmax = _csr_gene_counts(x.indices, x.data, vkey, n_genes) if csr else _dense_gene_counts(x, vkey)
    vbits = max(int(vmax - vmin).bit_length(), 1)  # value keys are stored less the smallest
    assert vbits + gbits <= 62, "too many distinct values and groups to pack into a 64-bit key"
    key_dtype, key_bits = (np.int32, KEY32_BITS) if vbits + gbits <= KEY32_BITS else (np.int64, 62)
    per_gene = ptr[-1] / max(n_genes, 1)
    lbits = min(int(np.log2(max(BLOCK_KEYS / max(per_gene, 1.0), 1.0))), 10, key_bits - vbits - gbits)
    lbits = max(lbits, 0)
    bounds = np.unique(np.r_[np.searchsorted(ptr, np.arange(0, ptr[-1], RANGE_KEYS), side="right") - 1, n_genes])
    bounds[0] = 0
    starts = row_starts(x.indptr, x.indices, np.arange(x.shape[0]), bounds) if csr else None
    sums, sumsq = np.empty((n_groups, n_genes)), np.empty((n_groups, n_genes))
    pval, n_float = np.empty((n_groups - 1, n_genes)), n_per_group.astype(np.float64)

    def run(k: int) -> None:
        lo, hi = bounds[k], bounds[k + 1]
        local = ptr[lo : hi + 1] - ptr[lo]
        keys = workers.scratch("keys", (int(local[-1]),), key_dtype)
        if csr:
            _csr_range_keys(x.indices, x.data, vkey, vmin, codes, starts[k], starts[k + 1], lo, local,
                            gbits, vbits, lbits, keys)
        else:
            _dense_range_keys(x, vkey, vmin, codes, lo, local, gbits, vbits, lbits, keys)
        edges = local[:: 1 << lbits].tolist() + [int(local[-1])]
        for start, stop in zip(edges[:-1], edges[1:]):
            if stop - start > 1:
                keys[start:stop].sort()
        nnz, u, ties = workers.scratch("range stats", (3, n_groups, hi - lo), np.float64)  # this range's only
        ctrl_ties = workers.scratch("control ties", (hi - lo,), np.float64)
        _scan(keys, local, lo, gbits, vbits, vmin, table, sums, sumsq, nnz, u, ties, ctrl_ties)
        _pvalues(u, nnz, ties, ctrl_ties, n_float, lo, pval)

    for job in [workers.pool.submit(run, k) for k in range(len(bounds) - 1)]:
        job.result()

    return GroupStats(sums, sumsq, pval)


def mwu_pvalues(cols, vals, groups, n_per_group, n_cols: int) -> np.ndarray:
    """p-values (perts x genes) from non-zero entries given as arrays: `cols` each entry's gene, `vals` its
    value, `groups` its cell's group (0 = control). Each entry becomes a one-entry row of a CSR matrix."""
    index = np.int32 if len(vals) < 2**31 else np.int64  # as scipy would pick
    indptr = np.arange(len(vals) + 1, dtype=index)
    x = CSRArrays(np.asarray(vals), np.asarray(cols, index), indptr, (len(vals), n_cols), has_canonical_format=True)
    return group_stats(x, np.asarray(groups, np.int64), np.asarray(n_per_group)).pval


def _value_key(vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An integer key per value that sorts like the (non-negative) values, and the table mapping a key back
    to its value: float32 bit patterns (empty table), else dense ranks into the unique values."""
    if vals.dtype != np.float32 and vals.size and np.array_equal(vals.astype(np.float32), vals):
        vals = vals.astype(np.float32)  # float64 holding float32 values: same order, same values
    if vals.dtype == np.float32:
        return vals.view(np.int32), np.zeros(0)
    uniq, inv = np.unique(vals, return_inverse=True)
    assert int(len(uniq)).bit_length() <= 40, "too many distinct values to pack into a key"
    return inv.reshape(vals.shape).astype(np.int64), uniq.astype(np.float64)


@kernel
def _csr_gene_counts(indices, data, vkey, n_genes):
    """(ptr, smallest value key, largest): gene g's non-zero entries number ptr[g+1] - ptr[g] (stored
    zeros are zeros)."""
    ptr = np.zeros(n_genes + 1, np.int64)
    vmin, vmax = np.int64(1) << 62, np.int64(0)
    for j in range(len(indices)):
        if data[j] != 0:
            ptr[indices[j] + 1] += 1
            vmin = min(vmin, np.int64(vkey[j]))
            vmax = max(vmax, np.int64(vkey[j]))
    for g in range(n_genes):
        ptr[g + 1] += ptr[g]
    return ptr, min(vmin, vmax), vmax


@kernel
def _dense_gene_counts(x, vkey):
    n_cells, n_genes = x.shape
    ptr = np.zeros(n_genes + 1, np.int64)
    vmin, vmax = np.int64(1) << 62, np.int64(0)
    for r in range(n_cells):
        for g in range(n_genes):
            if x[r, g] != 0:
                ptr[g + 1] += 1
                vmin = min(vmin, np.int64(vkey[r, g]))
                vmax = max(vmax, np.int64(vkey[r, g]))
    for g in range(n_genes):
        ptr[g + 1] += ptr[g]
    return ptr, min(vmin, vmax), vmax


@kernel
def row_starts(indptr, indices, rows, bounds):
    """starts[k, i]: the first entry of row rows[i] whose gene is >= bounds[k] (indices sorted within rows)."""
    starts = np.empty((len(bounds), len(rows)), np.int64)
    for i in range(len(rows)):
        lo, hi = indptr[rows[i]], indptr[rows[i] + 1]
        row = indices[lo:hi]
        for k in range(len(bounds)):
            starts[k, i] = lo + np.searchsorted(row, bounds[k])
    return starts


@kernel
def _csr_range_keys(indices, data, vkey, vmin, codes, first, stop, lo, ptr, gbits, vbits, lbits, keys):
    """Keys of genes lo.. (the entries first[r]:stop[r] of each row r) into `keys`, block-major: one
    counting-sort pass over the cells by block of 2**lbits genes, few enough places to write to that they
    stay in the cache. A key packs (gene within its block, value key, group) from high bits to low, so
    sorting a block orders it by gene, then value, control first among equal values."""
    fill = ptr[:-1 : 1 << lbits].copy()
    lmask, lshift = (1 << lbits) - 1, gbits + vbits
    for r in range(len(first)):
        for j in range(first[r], stop[r]):
            if data[j] != 0:
                g = indices[j] - lo
                keys[fill[g >> lbits]] = (np.int64(g & lmask) << lshift) | ((vkey[j] - vmin) << gbits) | codes[r]
                fill[g >> lbits] += 1


@kernel
def _dense_range_keys(x, vkey, vmin, codes, lo, ptr, gbits, vbits, lbits, keys):
    """As `_csr_range_keys`, for the genes lo..lo+len(ptr)-2 of a dense cells x genes array."""
    fill = ptr[:-1 : 1 << lbits].copy()
    lmask, lshift = (1 << lbits) - 1, gbits + vbits
    for r in range(x.shape[0]):
        for g in range(len(ptr) - 1):
            if x[r, lo + g] != 0:
                keys[fill[g >> lbits]] = (np.int64(g & lmask) << lshift) | ((vkey[r, lo + g] - vmin) << gbits) | codes[r]
                fill[g >> lbits] += 1


@kernel
def _scan(keys, ptr, lo, gbits, vbits, vmin, table, sums, sumsq, nnz, u, ties, ctrl_ties):
    """For the genes lo..lo+len(ptr)-2, whose sorted keys lie in `keys` (gene g at ptr[g]:ptr[g+1], g
    counted from lo): one walk over each gene's keys (module docstring), writing these genes' columns of
    the (groups x genes) sums and sums of squares, and their Mann-Whitney statistics (non-zeros, U, tie
    terms; column g) into the range's own arrays.

    The walk has no data-dependent branch. Within a run of tied values the control entries come first, so
    when an entry of p arrives, `below - run_start` is the run's control count a, and the run's earlier
    entries of p number j. Its U term is (control entries below the run) + a/2, and it raises p's tie term
    from the run's (a+j)^3 - a^3 - j to (a+j+1)^3 - a^3 - (j+1), by 3m(m+1) with m = a + j. A control
    entry raises the control's own tie term a^3 - a the same way, with m = the control entries before it.
    Counts, U (doubled) and tie terms add up as int64, so they are exact whatever the order.
    """
    n_groups, n_genes = sums.shape[0], len(ptr) - 1
    total, total_sq = np.zeros(n_groups), np.zeros(n_groups)  # per group: sum of values, of squares
    count, twice_u, tie = np.zeros(n_groups, np.int64), np.zeros(n_groups, np.int64), np.zeros(n_groups, np.int64)
    gmask, vmask = (1 << gbits) - 1, (1 << vbits) - 1
    bits = np.zeros(1, np.int32)
    bits_as_float = bits.view(np.float32)
    for g in range(n_genes):
        for arr in (total, total_sq):
            arr[:] = 0.0
        for arr in (count, twice_u, tie):  # integers: exact
            arr[:] = 0
        below = 0  # control entries sorted before this entry
        run_start = 0  # control entries sorted before this entry's run of tied values
        j = 0  # earlier entries of the run with this entry's group
        prev = np.int64(-1)
        for key in keys[ptr[g] : ptr[g + 1]]:
            k = np.int64(key)
            grp = np.uint32(k & gmask)  # unsigned: no negative-index wraparound in the loop
            run_start = run_start if (k ^ prev) >> gbits == 0 else below
            j = j + 1 if k == prev else 0
            prev = k
            vk = ((k >> gbits) & vmask) + vmin
            if len(table):  # keys index a table of the values
                value = table[vk]
            else:  # keys are float32 bit patterns
                bits[0] = vk
                value = np.float64(bits_as_float[0])
            m = below - run_start + (j if grp else 0)
            total[grp] += value
            total_sq[grp] += value * value
            count[grp] += 1
            twice_u[grp] += below + run_start
            tie[grp] += 3 * m * (m + 1)
            below += grp == 0
        ctrl_ties[g] = tie[0]
        for grp in range(n_groups):
            sums[grp, lo + g] = total[grp]
            sumsq[grp, lo + g] = total_sq[grp]
            nnz[grp, g] = count[grp]
            u[grp, g] = 0.5 * twice_u[grp]
            ties[grp, g] = tie[grp]


def _pvalues(u, nnz, ties, ctrl_ties, n_per_group, lo: int, out: np.ndarray) -> None:
    """pdex's asymptotic p-values of the genes lo.., whose statistics are the columns of `u` etc. (`_scan`),
    into out[:, lo:], operation for operation, so the float64 results agree exactly: the z scores in one
    compiled pass, then scipy's erfc in place (`cephes`: the same function, without scipy)."""
    flat = _z_over_sqrt2(u, nnz, ties, ctrl_ties, n_per_group, lo, out)
    hi = lo + u.shape[1]
    cephes.erfc_columns(out, lo, hi, *cephes.COEFFICIENTS)
    arg = out[:, lo:hi]
    arg *= 0.5
    arg *= 2.0
    np.clip(arg, 0.0, 1.0, out=arg)
    arg[flat] = 1.0  # every value tied (zero variance): p = 1


@kernel(error_model="numpy")
def _z_over_sqrt2(u, nnz, ties, ctrl_ties, n_per_group, lo, out):
    """z / sqrt(2) of each perturbation vs the control for the genes lo.. (column g of `u` etc.: gene
    lo + g), into out[:, lo:]; returns where the variance is zero, (perts x genes of the range). Zeros
    enter in closed form (module docstring); every operation and its order are pdex's."""
    n_perts, n_genes = u.shape[0] - 1, u.shape[1]
    flat = np.zeros((n_perts, n_genes), np.bool_)
    n2 = n_per_group[0]
    for i in range(n_perts):
        n1 = n_per_group[i + 1]
        n = n1 + n2
        for g in range(n_genes):
            zeros_ctrl = n2 - nnz[0, g]
            zeros_pert = n1 - nnz[i + 1, g]
            zeros = zeros_pert + zeros_ctrl
            u1 = u[i + 1, g] + nnz[i + 1, g] * zeros_ctrl + 0.5 * zeros_pert * zeros_ctrl
            tie_term = ctrl_ties[g] + ties[i + 1, g] + (zeros - 1.0) * zeros * (zeros + 1.0)
            big_u = max(u1, n1 * n2 - u1)
            mu = n1 * n2 / 2.0
            s_sq = n1 * n2 / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)))
            flat[i, g] = s_sq <= 0.0
            out[i, lo + g] = (big_u - mu - 0.5) / np.sqrt(s_sq) / np.sqrt(2.0)
    return flat


def bh_significant(p: Float[np.ndarray, "perts genes"], alpha: np.float32) -> np.ndarray:
    """Benjamini-Hochberg significance within each perturbation (row), as pdex computes it with scipy's
    `false_discovery_control(method="bh")` and cell-eval compares it in float32: `fdr.astype(float32) <
    alpha`, bit for bit, but sorting only the p-values that can pass (scipy.stats is slow to import).

    A BH value is a minimum of terms p_(j) * m / j >= p_(j), so p-values at or above 1.2 * alpha give
    terms that can never pass, and the passing minimum, when there is one, comes from the smaller
    p-values alone; those are also the first in sorted order, so their ranks j are the same.
    """
    m = p.shape[-1]
    out = np.zeros(p.shape, bool)
    if m <= 1:
        return p.astype(np.float32) < alpha
    for row, pr in zip(out, p):
        cand = np.flatnonzero(pr < 1.2 * float(alpha))
        if not len(cand):
            continue
        order = cand[np.argsort(pr[cand])]
        ps = pr[order] * (m / np.arange(1, len(order) + 1, dtype=pr.dtype))
        np.minimum.accumulate(ps[::-1], out=ps[::-1])
        row[order] = np.clip(ps, 0.0, 1.0).astype(np.float32) < alpha
    return out
