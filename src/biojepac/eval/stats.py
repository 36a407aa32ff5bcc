"""Every per-group summary the metrics need, from one pass over a file's non-zero entries.

The group sums and sums of squares (pseudobulk means, t-test variances) and, when asked, the Mann-Whitney
p-values of every perturbation against this file's own controls (`mwu`). Memory is a key buffer per
worker thread (`mwu.RANGE_KEYS` keys) plus (groups x genes) summaries; the dense matrix is never built.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import os
from typing import TYPE_CHECKING

import numpy as np

from biojepac.eval import mwu
from biojepac.eval.h5read import is_sparse
from biojepac.eval.inputs import ScoredScreen
from biojepac.eval.kernels import kernel

if TYPE_CHECKING:
    import scipy.sparse as sp

N_THREADS = min(4, len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else 2
"""Threads for the Mann-Whitney pass (its compiled loop releases the GIL)."""
FDR = np.float32(0.05)
"""Significance cut of the DEG sets (`Summary.significant`). cell-eval casts FDRs to float32 before
comparing, so we compare in float32 too."""


@dataclasses.dataclass(frozen=True)
class Summary:
    """Per-group summaries of one file. Row 0 is the control, rows 1..P the perturbations. The variances, the
    effects and the DEG sets are worked out when first asked for, once (many metrics need none of them)."""

    n: np.ndarray
    """Cells per group, (groups,)."""
    mean: np.ndarray
    """Mean log1p expression per group, (groups x genes), float64."""
    sumsq: np.ndarray
    """Sum of squared log1p values per group, (groups x genes), float64."""
    pval: np.ndarray | None
    """Mann-Whitney p-value of each perturbation vs control, (perts x genes); None if not computed."""

    @functools.cached_property
    def var(self) -> np.ndarray:
        """Unbiased (ddof=1) variance per group, (groups x genes); NaN for a group of one cell."""
        n = self.n[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.clip(self.sumsq - n * self.mean**2, 0.0, None) / (n - 1)

    @functools.cached_property
    def effects(self) -> np.ndarray:
        """(perts x genes) pseudobulk minus this file's control pseudobulk."""
        return self.mean[1:] - self.mean[:1]

    @functools.cached_property
    def significant(self) -> np.ndarray:
        """(perts x genes) DEGs: Benjamini-Hochberg FDR below `FDR` within each perturbation, as cell-eval."""
        return mwu.bh_significant(self.pval, FDR)

    def lfc(self, pert: int, genes: np.ndarray) -> np.ndarray:
        """pdex's log2 fold change of pseudobulks, log2(expm1(mean_pert) / expm1(mean_ctrl)) in float32, of
        perturbation `pert` (0-based, as in `pval`) for `genes`.

        pdex takes the means in float32 and casts the result to float32; we round the float64 means to
        float32 first so ties and infinities (a gene absent from the controls) fall where pdex puts them.
        0/0 (absent from both) is defined as 0, as in pdex.
        """
        m32 = self.mean[[pert + 1, 0]][:, genes].astype(np.float32).astype(np.float64)
        bulk = np.expm1(m32).astype(np.float32).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            lfc = np.log2(bulk[0] / bulk[1])
        return np.where(np.isnan(lfc), 0.0, lfc).astype(np.float32)


def summarize(screen: ScoredScreen, *, with_de: bool, workers: mwu.Workers | int = N_THREADS) -> Summary:
    """Group means, variances and (optionally) MWU p-values, each from one compiled pass over the entries.

    With DE, the Mann-Whitney pass (`mwu.group_stats`) sums the values too, on `workers` (a number of
    threads, or `mwu.Workers` shared with other files summarised at the same time).
    """
    n = screen.n_cells_per_group
    if with_de:
        res = mwu.group_stats(screen.x, screen.codes, n, workers)
        sums, sumsq, pval = res.sums, res.sumsq, res.pval
    else:
        sums, sumsq = _group_sums(screen.x, screen.codes, len(n))
        pval = None
    return Summary(n, sums / n[:, None], sumsq, pval)


def _group_sums(x: sp.spmatrix | np.ndarray, codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per (group, gene) sums and sums of squares, in float64."""
    if is_sparse(x):
        x = x if x.format == "csr" else x.tocsr()
        return _csr_group_sums(x.indptr, x.indices, x.data, codes, n_groups, x.shape[1])
    sums = np.stack([x[codes == k].sum(axis=0, dtype=np.float64) for k in range(n_groups)])
    sumsq = np.stack([np.square(x[codes == k], dtype=np.float64).sum(axis=0) for k in range(n_groups)])
    return sums, sumsq


@kernel
def _csr_group_sums(indptr, indices, data, codes, n_groups, n_genes):
    sums = np.zeros((n_groups, n_genes))
    sumsq = np.zeros((n_groups, n_genes))
    for r in range(len(indptr) - 1):
        for j in range(indptr[r], indptr[r + 1]):
            v = np.float64(data[j])
            sums[codes[r], indices[j]] += v
            sumsq[codes[r], indices[j]] += v * v
    return sums, sumsq


def pdex_lfc(screen: ScoredScreen):
    """pdex's float32 log2 fold change for a few genes of one perturbation, reproduced bit for bit:
    returns `lfc(pert_code, genes)`.

    Needed only to order genes whose |LFC| may tie at the top-N cut of DES. pdex averages in float32 in
    row order (sparse: scale each value by 1/n, then sum; dense: sum, then divide) and applies the C
    library's `expm1f`; we do the same, averaging the control once over every gene (every perturbation
    needs it) and a perturbation over just the genes asked for, and applying expm1 to those genes only.
    """
    order = np.argsort(screen.codes, kind="stable")  # each group's cells, in file order
    starts = np.searchsorted(screen.codes[order], np.arange(screen.codes.max() + 2))
    control = _pdex_mean(screen.x, order[starts[0] : starts[1]], np.arange(screen.x.shape[1]))

    def lfc(pert_code: int, genes: np.ndarray) -> np.ndarray:
        pert = _pdex_expm1(_pdex_mean(screen.x, order[starts[pert_code] : starts[pert_code + 1]], genes))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.log2(pert / _pdex_expm1(control[genes]))
        return np.where(np.isnan(ratio), 0.0, ratio).astype(np.float32)

    return lfc


def _pdex_mean(x: sp.csr_matrix | np.ndarray, rows: np.ndarray, genes: np.ndarray) -> np.ndarray:
    """The mean over `rows` of x for `genes`, in pdex's precision and summation order (each gene's values
    added in row order)."""
    dtype = np.float32 if x.dtype == np.float32 else np.float64
    acc = np.zeros(len(genes), dtype)
    if is_sparse(x):
        slot = np.full(x.shape[1], -1, np.int64)
        slot[genes] = np.arange(len(genes))
        _csr_scaled_sums(x.indptr, x.indices, x.data, rows, slot, dtype(1.0 / len(rows)), acc)
    else:
        for row in rows:
            acc += x[row, genes].astype(dtype)
        acc = (acc.astype(np.float64) / len(rows)).astype(dtype)
    return acc


def _pdex_expm1(acc: np.ndarray) -> np.ndarray:
    return (_expm1f(acc) if acc.dtype == np.float32 else np.expm1(acc)).astype(np.float64)


@kernel
def _csr_scaled_sums(indptr, indices, data, rows, slot, scale, acc):
    """acc[slot[gene]] += value * scale over the entries of `rows`, in row order (genes with slot -1 skipped)."""
    for r in rows:
        for j in range(indptr[r], indptr[r + 1]):
            s = slot[indices[j]]
            if s >= 0:
                acc[s] += data[j] * scale


def _expm1f(x: np.ndarray) -> np.ndarray:
    """The C library's single-precision expm1 (what numba calls), which differs from numpy's in the last bit."""
    return np.frompyfunc(_libm_expm1f(), 1, 1)(x).astype(np.float32)


@functools.cache
def _libm_expm1f():
    # Looked up once: `find_library` runs `ldconfig` in a subprocess, and forking a process holding GBs is slow.
    fn = ctypes.CDLL(ctypes.util.find_library("m")).expm1f
    fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
    return fn
