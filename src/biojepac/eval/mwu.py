"""Mann-Whitney U of every perturbation against the control, for every gene at once, plus BH FDR.

Matches pdex (cell-eval's DE library) as cell-eval calls it: two-sided, asymptotic normal approximation,
tie-corrected variance, continuity correction 0.5, and p = 1 when every value is tied.

How it works, in three compiled (numba) passes over the non-zero entries; zeros dominate single-cell data
and are all tied, so they are handled in closed form.
1. `matrix_keys`: each non-zero entry becomes one int64 key, (value key << group bits) | group, with the
   control as group 0, written straight into gene-major order (one counting-sort pass over the cells:
   no transposed copy of the matrix). Non-negative float32 values sort like their bit patterns.
2. `_sort_and_scan`, per gene: a radix sort of its keys (3.5x faster than numpy's sort on these short
   runs), so that entries come by (value, group).
3. In the same loop, one walk over the runs of equal values. A run holding `a` control cells and, per
   perturbation p, `b` cells of p adds to U(p)

       b * (control non-zeros below the run + a / 2)

   and the tie term of pdex's variance, sum over tie groups of (t^3 - t) in (p + control), is

       ties(p) = sum over runs of (a^3 - a) + sum over p's runs of ((a+b)^3 - a^3 - b) + (z^3 - z)

   with z = z_p + z_c the zeros of p and of the control; U(p) gains z_c for each non-zero of p (every
   control zero lies below it) and z_p * z_c / 2 for the tied zeros. All terms are exact integers or
   halves in float64, so U and the tie term equal pdex's bit for bit whatever the summation order. The
   walk also sums each group's values and squares, so the means come with the p-values.
"""

import concurrent.futures
import dataclasses

import numba
import numpy as np
import scipy.sparse as sp
import scipy.special
from jaxtyping import Float

RADIX_BITS = 11
"""Bits per radix-sort pass (2,048 buckets)."""
BLOCK_KEYS = 1 << 16
"""Aim for about this many keys (512 KiB) per block of genes, so that a block is sorted within the cache."""


@dataclasses.dataclass(frozen=True)
class Keys:
    """A matrix's non-zero entries as int64 keys (`matrix_keys`), grouped by blocks of 2**lbits genes.

    A key is (gene within its block, value key, group) packed from high bits to low, so sorting a block's
    keys puts them gene by gene, and within a gene by value, the control first among equal values.
    """

    keys: np.ndarray
    """Block-major keys; a block's keys are sorted in place by `group_stats`."""
    gene_ptr: np.ndarray
    """Gene g's keys lie at keys[gene_ptr[g]:gene_ptr[g+1]] once its block is sorted."""
    table: np.ndarray
    """Maps a value key back to its value; empty when the value key is the float32 bit pattern."""
    gbits: int
    """Low bits holding the group."""
    vbits: int
    """Bits holding the value key, above the group."""
    lbits: int
    """log2 of the genes per block; the gene within its block sits above the value key."""


@dataclasses.dataclass(frozen=True)
class GroupStats:
    """Per (group, gene) results; row 0 is the control."""

    sums: np.ndarray
    """Sum of the values, (groups x genes), float64."""
    sumsq: np.ndarray
    """Sum of the squared values, (groups x genes), float64."""
    pval: np.ndarray
    """Two-sided Mann-Whitney p-value of each perturbation vs the control, (perts x genes)."""


def group_bits(n_groups: int) -> int:
    """Bits that hold a group code 0..n_groups-1 in the low end of a key."""
    return max(int(n_groups - 1).bit_length(), 1)


def matrix_keys(x: sp.spmatrix | np.ndarray, codes: np.ndarray, gbits: int) -> Keys:
    """The non-zero entries of a cells x genes matrix as `Keys`. The matrix is only read.

    One pass over the cells writes each key into its block of genes: a few hundred places to write to
    rather than one per gene (18,080 pages in flight thrash the TLB; the genes of a block are separated
    later, inside the cache, by the sort).
    """
    csr = sp.issparse(x)
    if csr:
        x = x if x.format == "csr" else x.tocsr()
    vkey, table = _value_key(x.data if csr else x.reshape(-1))
    vbits = 31 if not len(table) else max(int(len(table) - 1).bit_length(), 1)
    n_genes = x.shape[1]
    per_gene = (x.nnz if csr else x.size) / max(n_genes, 1)
    lbits = min(int(np.log2(max(BLOCK_KEYS / max(per_gene, 1.0), 1.0))), 10, 62 - vbits - gbits)
    lbits = max(lbits, 0)
    if csr:
        keys, ptr = _csr_keys(x.indptr, x.indices, x.data, vkey, codes, gbits, vbits, lbits, n_genes)
    else:
        keys, ptr = _dense_keys(x, vkey.reshape(x.shape), codes, gbits, vbits, lbits)
    return Keys(keys, ptr, table, gbits, vbits, lbits)


def group_stats(keys: Keys, n_per_group: np.ndarray, n_threads: int = 1) -> GroupStats:
    """Sums, sums of squares and p-values of groups 1..P vs group 0 from `matrix_keys`.

    The keys are sorted in place, block by block. Blocks are dealt into chunks of about equal entries that
    `n_threads` threads process at once (the compiled loop releases the GIL).
    """
    n_groups, n_genes = len(n_per_group), len(keys.gene_ptr) - 1
    sums, sumsq, nnz, u, ties = (np.zeros((n_groups, n_genes)) for _ in range(5))
    ctrl_ties = np.zeros(n_genes)
    starts = np.arange(0, n_genes, 1 << keys.lbits)
    n_chunks = max(1, 8 * n_threads)
    cuts = np.unique(starts[np.searchsorted(keys.gene_ptr[starts], np.linspace(0, keys.gene_ptr[-1], n_chunks + 1))
                            .clip(0, len(starts) - 1)])
    cuts = np.r_[0, cuts[cuts > 0], n_genes] if n_genes else np.zeros(1, np.int64)

    def run(lo: int, hi: int) -> None:
        _sort_and_scan(keys.keys, keys.gene_ptr, lo, hi, keys.gbits, keys.vbits, keys.lbits, keys.table,
                       sums, sumsq, nnz, u, ties, ctrl_ties)

    with concurrent.futures.ThreadPoolExecutor(max(1, n_threads)) as pool:
        list(pool.map(run, cuts[:-1].tolist(), cuts[1:].tolist()))

    zeros_ctrl = n_per_group[0] - nnz[0]
    n1 = n_per_group[1:, None].astype(np.float64)
    zeros_pert = n1 - nnz[1:]
    zeros = zeros_pert + zeros_ctrl[None, :]
    u1 = u[1:] + nnz[1:] * zeros_ctrl[None, :] + 0.5 * zeros_pert * zeros_ctrl[None, :]
    tie_term = ctrl_ties[None, :] + ties[1:] + (zeros - 1.0) * zeros * (zeros + 1.0)
    return GroupStats(sums, sumsq, _pvalue(u1, n1, float(n_per_group[0]), tie_term))


def mwu_pvalues(cols, vals, groups, n_per_group, n_cols: int) -> np.ndarray:
    """p-values (perts x genes) from non-zero entries given as arrays: `cols` each entry's gene
    (non-decreasing), `vals` its value, `groups` its cell's group (0 = control)."""
    gbits = group_bits(len(n_per_group))
    vkey, table = _value_key(vals)
    keys = (vkey.astype(np.int64) << gbits) | groups
    ptr = np.searchsorted(cols, np.arange(n_cols + 1))
    vbits = 31 if not len(table) else max(int(len(table) - 1).bit_length(), 1)
    return group_stats(Keys(keys, ptr, table, gbits, vbits, 0), np.asarray(n_per_group)).pval


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


@numba.njit(nogil=True, cache=True)
def _csr_keys(indptr, indices, data, vkey, codes, gbits, vbits, lbits, n_genes):
    """Keys of a CSR matrix's non-zero entries, block-major (a counting sort by block of genes)."""
    ptr = np.zeros(n_genes + 1, np.int64)
    for j in range(len(indices)):
        if data[j] != 0:  # stored zeros are zeros
            ptr[indices[j] + 1] += 1
    for g in range(n_genes):
        ptr[g + 1] += ptr[g]
    fill = ptr[: n_genes : 1 << lbits].copy()
    keys = np.empty(ptr[n_genes], np.int64)
    lmask, lshift = (1 << lbits) - 1, gbits + vbits
    for r in range(len(indptr) - 1):
        for j in range(indptr[r], indptr[r + 1]):
            if data[j] != 0:
                g = indices[j]
                keys[fill[g >> lbits]] = (np.int64(g & lmask) << lshift) | (np.int64(vkey[j]) << gbits) | codes[r]
                fill[g >> lbits] += 1
    return keys, ptr


@numba.njit(nogil=True, cache=True)
def _dense_keys(x, vkey, codes, gbits, vbits, lbits):
    """As `_csr_keys`, for a dense cells x genes array."""
    n_cells, n_genes = x.shape
    ptr = np.zeros(n_genes + 1, np.int64)
    for r in range(n_cells):
        for g in range(n_genes):
            if x[r, g] != 0:
                ptr[g + 1] += 1
    for g in range(n_genes):
        ptr[g + 1] += ptr[g]
    fill = ptr[: n_genes : 1 << lbits].copy()
    keys = np.empty(ptr[n_genes], np.int64)
    lmask, lshift = (1 << lbits) - 1, gbits + vbits
    for r in range(n_cells):
        for g in range(n_genes):
            if x[r, g] != 0:
                keys[fill[g >> lbits]] = (np.int64(g & lmask) << lshift) | (np.int64(vkey[r, g]) << gbits) | codes[r]
                fill[g >> lbits] += 1
    return keys, ptr


@numba.njit(nogil=True, cache=True)
def _sort_and_scan(keys, ptr, lo, hi, gbits, vbits, lbits, table, sums, sumsq, nnz, u, ties, ctrl_ties):
    """For the blocks of genes lo..hi-1: sort each block's keys, then walk each gene's once (module
    docstring), adding into the (groups x genes) outputs' columns of these genes.

    The walk has no data-dependent branch. Within a run of tied values the control entries come first, so
    when an entry of p arrives, `below - run_start` is the run's control count a, and the run's earlier
    entries of p number j. Its U term is (control entries below the run) + a/2, and it raises p's tie term
    from the run's (a+j)^3 - a^3 - j to (a+j+1)^3 - a^3 - (j+1), by 3m(m+1) with m = a + j. A control
    entry raises the control's own tie term a^3 - a the same way, with m = the control entries before it.
    """
    n_groups, width = sums.shape[0], 1 << lbits
    longest = 0
    for b in range(lo, hi, width):
        longest = max(longest, ptr[min(b + width, hi)] - ptr[b])
    spare = np.empty(longest, np.int64)
    hist = np.zeros((64 // RADIX_BITS + 1, 1 << RADIX_BITS), np.int64)
    bits = np.zeros(1, np.int32)
    as_float = bits.view(np.float32)  # float32 values are keyed by their bit pattern
    acc = np.zeros((n_groups, 5))  # per group: sum, sum of squares, count, U, tie term
    gmask, vmask = (1 << gbits) - 1, (1 << vbits) - 1
    for b in range(lo, hi, width):
        _radix_sort(keys[ptr[b] : ptr[min(b + width, hi)]], spare, hist)
        for g in range(b, min(b + width, hi)):
            acc[:] = 0.0
            below = 0  # control entries sorted before this entry
            run_start = 0  # control entries sorted before this entry's run of tied values
            j = 0  # earlier entries of the run with this entry's group
            prev = np.int64(-1)
            for k in keys[ptr[g] : ptr[g + 1]]:
                grp = k & gmask
                run_start = run_start if (k ^ prev) >> gbits == 0 else below
                j = j + 1 if k == prev else 0
                prev = k
                if len(table):
                    value = table[(k >> gbits) & vmask]
                else:
                    bits[0] = (k >> gbits) & vmask
                    value = np.float64(as_float[0])
                m = below - run_start + (j if grp else 0)
                acc[grp, 0] += value
                acc[grp, 1] += value * value
                acc[grp, 2] += 1.0
                acc[grp, 3] += 0.5 * (below + run_start)
                acc[grp, 4] += 3 * m * (m + 1)
                below += grp == 0
            ctrl_ties[g] = acc[0, 4]
            for grp in range(n_groups):
                sums[grp, g] = acc[grp, 0]
                sumsq[grp, g] = acc[grp, 1]
                nnz[grp, g] = acc[grp, 2]
                u[grp, g] = acc[grp, 3]
                ties[grp, g] = acc[grp, 4]


@numba.njit(nogil=True, cache=True)
def _radix_sort(key, spare, hist):
    """Sort non-negative int64 keys in place: insertion sort for a few, else LSD radix over the span, with
    every pass's histogram counted in one read (`hist`: passes x buckets) and passes on a digit that all
    keys share skipped."""
    n = len(key)
    if n <= 32:
        for i in range(1, n):
            v = key[i]
            k = i - 1
            while k >= 0 and key[k] > v:
                key[k + 1] = key[k]
                k -= 1
            key[k + 1] = v
        return
    low, high = key.min(), key.max()
    passes = 0
    while passes * RADIX_BITS < 63 and (high - low) >> (passes * RADIX_BITS):
        passes += 1
    mask = (1 << RADIX_BITS) - 1
    hist[:passes] = 0
    for i in range(n):
        d = key[i] - low
        for p in range(passes):
            hist[p, (d >> (p * RADIX_BITS)) & mask] += 1
    src, dst = key, spare[:n]
    done = 0
    for p in range(passes):
        shift = p * RADIX_BITS
        if hist[p, ((key[0] - low) >> shift) & mask] == n:
            continue  # every key has this digit
        total = 0
        for d in range(mask + 1):
            count = hist[p, d]
            hist[p, d] = total
            total += count
        for i in range(n):
            d = ((src[i] - low) >> shift) & mask
            dst[hist[p, d]] = src[i]
            hist[p, d] += 1
        src, dst = dst, src
        done += 1
    if done % 2:  # the sorted keys ended in the spare buffer
        key[:] = src


def _pvalue(u1: np.ndarray, n1: np.ndarray, n2: float, ties: np.ndarray) -> np.ndarray:
    """pdex's asymptotic formula, operation for operation, so the float64 results agree exactly."""
    n = n1 + n2
    u = np.maximum(u1, n1 * n2 - u1)
    mu = n1 * n2 / 2.0
    s_sq = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (u - mu - 0.5) / np.sqrt(s_sq)
        p = 0.5 * scipy.special.erfc(z / np.sqrt(2.0)) * 2.0
    return np.where(s_sq <= 0.0, 1.0, np.clip(p, 0.0, 1.0))


def bh_fdr(p: Float[np.ndarray, "perts genes"]) -> Float[np.ndarray, "perts genes"]:
    """Benjamini-Hochberg within each perturbation (row), as pdex does with scipy's
    `false_discovery_control(method="bh")`: the same operations, so the same bits (scipy.stats is slow to
    import, so it is not used here)."""
    m = p.shape[-1]
    if m <= 1:
        return p
    order = np.argsort(p, axis=-1)
    ps = np.take_along_axis(p, order, axis=-1)
    ps *= m / np.arange(1, m + 1, dtype=ps.dtype)
    np.minimum.accumulate(ps[..., ::-1], out=ps[..., ::-1], axis=-1)  # reject every p below a rejected one
    out = np.empty_like(ps)
    np.put_along_axis(out, order, ps, axis=-1)
    return np.clip(out, 0.0, 1.0)
