"""VCC 2026's DE statistics: scanpy's Wilcoxon rank-sum of every perturbation against the control on
log1p(CPM), for every gene, without a transposed copy of the matrix.

`wilcoxon_stats` cuts the genes into blocks of about BLOCK_ENTRIES stored entries. Each block is one task for
a thread, in three steps:
1. `_fill_block` gathers the block's entries gene by gene from the CSR rows of one or more sources (a
   prediction's perturbed cells and the reference's control cells, say): each entry's CPM value
   (count / (cell total / 1e6), scanpy's operations) and its group; it also sums each group's CPM per gene,
   in cell order, for the fold changes.
2. numpy's `log1p` in place: the exact values scanpy ranks (two CPM values a few ulps apart can share one
   logarithm, so ranks come from these, not from the CPM).
3. `_rank_block` orders each gene's entries (a bucket sort) and walks the runs of tied values once. A run holding `a`
   control entries and `b` entries of group p adds b * (control entries below the run + a/2) to U(p) and
   (a+b)^3 - a^3 - b to p's tie term; the control's own tie term gains a^3 - a. Zeros are all tied and enter
   in closed form later (`vcc2026._scanpy_pvalues`). Counts, doubled U and tie terms are int64: exact.

Memory is a block per thread, whatever the size of the matrix.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses

import numpy as np

from biojepac.eval.kernels import kernel
from biojepac.eval.mwu import row_starts

BLOCK_ENTRIES = 1 << 22
"""Stored entries per block of genes (about 50 MiB of values, groups and sort order)."""


@dataclasses.dataclass(frozen=True)
class Source:
    """Cells of one CSR matrix taking part in a test: `rows` (ascending) with group `codes` (0 = control)."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    rows: np.ndarray
    codes: np.ndarray
    per: np.ndarray
    """Each row's CPM divisor: total / 1e6 (1 for an empty row)."""


@dataclasses.dataclass(frozen=True)
class RankStats:
    """Per (group, gene): row 0 is the control."""

    u: np.ndarray
    """U of the non-zero entries against the control's non-zero entries (halves included)."""
    nnz: np.ndarray
    ties: np.ndarray
    """sum over the runs of p's entries of (a+b)^3 - a^3 - b."""
    ctrl_ties: np.ndarray
    """Per gene: sum over the control's runs of a^3 - a."""
    cpm_sums: np.ndarray
    """Sum of the CPM values per (group, gene)."""


def wilcoxon_stats(sources: list[Source], n_groups: int, n_genes: int, workers: int = 2) -> RankStats:
    """Rank statistics of groups 1.. against group 0 over the cells of `sources` (module docstring)."""
    col_counts = np.zeros(n_genes, np.int64)
    for s in sources:
        _count_columns(s.indptr, s.indices, s.data, s.rows, col_counts)
    cum = np.r_[0, np.cumsum(col_counts)]
    cuts = np.unique(np.r_[np.searchsorted(cum, np.arange(0, cum[-1], BLOCK_ENTRIES), side="right") - 1, n_genes])
    cuts[0] = 0
    starts = [row_starts(s.indptr, s.indices, s.rows, cuts) for s in sources]
    u2, nnz, ties = (np.zeros((n_genes, n_groups), np.int64) for _ in range(3))
    ctrl_ties = np.zeros(n_genes, np.int64)
    cpm_sums = np.zeros((n_groups, n_genes))

    def block(k: int) -> None:
        lo, hi = int(cuts[k]), int(cuts[k + 1])
        ptr = np.r_[0, np.cumsum(col_counts[lo:hi])]
        vals = np.empty(ptr[-1])
        grp = np.empty(ptr[-1], np.int32)
        fill = ptr[:-1].copy()
        for s, st in zip(sources, starts):
            _fill_block(s.indices, s.data, s.rows, s.codes, s.per, st[k], st[k + 1], lo, fill, vals, grp, cpm_sums)
        np.log1p(vals, out=vals)
        _rank_block(ptr, vals, grp, lo, n_groups, u2, nnz, ties, ctrl_ties)

    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        for job in [pool.submit(block, k) for k in range(len(cuts) - 1)]:
            job.result()
    return RankStats(0.5 * u2.T, nnz.T.astype(np.float64), ties.T.astype(np.float64), ctrl_ties.astype(np.float64),
                     cpm_sums)


@kernel
def _count_columns(indptr, indices, data, rows, out):
    for r in rows:
        for j in range(indptr[r], indptr[r + 1]):
            if data[j] != 0:
                out[indices[j]] += 1


@kernel
def _fill_block(indices, data, rows, codes, per, first, stop, lo, fill, vals, grp, cpm_sums):
    """Entries first[i]:stop[i] of each row rows[i] into the block's gene-major arrays (genes from lo)."""
    for i in range(len(rows)):
        c = codes[i]
        d = per[i]
        for j in range(first[i], stop[i]):
            if data[j] != 0:
                g = indices[j]
                v = np.float64(data[j]) / d
                pos = fill[g - lo]
                vals[pos] = v
                grp[pos] = c
                fill[g - lo] = pos + 1
                cpm_sums[c, g] += v


INSERTION_MAX = 24
"""Buckets up to this size are sorted by insertion, larger ones by numpy's sort."""


@kernel
def _rank_block(ptr, vals, grp, lo, n_groups, u2, nnz, ties, ctrl_ties):
    """Each gene's runs of tied values, walked in ascending order (module docstring); outputs are (genes x
    groups) so that a gene's row is written by one thread.

    A gene's entries are ordered by a bucket sort: bucket floor((v - min) * (B - 1) / (max - min)) of B (about
    the entry count) buckets is a non-decreasing function of v (each operation is), so sorting the buckets'
    contents by value completes the order; most buckets hold one or two entries."""
    longest = 1
    for g in range(len(ptr) - 1):
        longest = max(longest, ptr[g + 1] - ptr[g])
    fill = np.empty(longest + 1, np.int64)
    sv = np.empty(longest)
    sg = np.empty(longest, np.int32)
    b = np.zeros(n_groups, np.int64)
    seen = np.empty(n_groups, np.int64)
    for g in range(len(ptr) - 1):
        s, e = ptr[g], ptr[g + 1]
        n = e - s
        if n == 0:
            continue
        v = vals[s:e]
        vmin, vmax = v[0], v[0]
        for t in range(n):
            vmin = min(vmin, v[t])
            vmax = max(vmax, v[t])
        n_b = n
        scale = (n_b - 1) / (vmax - vmin) if vmax > vmin else 0.0
        fill[: n_b + 1] = 0
        for t in range(n):
            fill[min(int((v[t] - vmin) * scale), n_b - 1) + 1] += 1
        for k in range(n_b):
            fill[k + 1] += fill[k]
        for t in range(n):
            k = min(int((v[t] - vmin) * scale), n_b - 1)
            sv[fill[k]] = v[t]
            sg[fill[k]] = grp[s + t]
            fill[k] += 1
        # fill[k] is now bucket k's end: sort each bucket by value
        first = 0
        for k in range(n_b):
            last = fill[k]
            if last - first > INSERTION_MAX:
                o = np.argsort(sv[first:last])
                sv[first:last] = sv[first:last][o]
                sg[first:last] = sg[first:last][o]
            else:
                for i in range(first + 1, last):
                    x, c = sv[i], sg[i]
                    j = i - 1
                    while j >= first and sv[j] > x:
                        sv[j + 1] = sv[j]
                        sg[j + 1] = sg[j]
                        j -= 1
                    sv[j + 1] = x
                    sg[j + 1] = c
            first = last
        gg = lo + g
        below = 0
        ct = 0
        k = 0
        while k < n:
            val = sv[k]
            a = 0
            n_seen = 0
            while k < n and sv[k] == val:
                c = sg[k]
                if c == 0:
                    a += 1
                else:
                    if b[c] == 0:
                        seen[n_seen] = c
                        n_seen += 1
                    b[c] += 1
                k += 1
            ct += a * a * a - a
            for t in range(n_seen):
                c = seen[t]
                m = b[c]
                u2[gg, c] += m * (2 * below + a)
                ties[gg, c] += (a + m) ** 3 - a * a * a - m
                nnz[gg, c] += m
                b[c] = 0
            nnz[gg, 0] += a
            below += a
        ctrl_ties[gg] = ct
