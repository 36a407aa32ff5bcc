"""One streaming pass over a file's genes that yields every per-group summary the metrics need.

For each block of genes: the group sums and sums of squares (pseudobulk means, t-test variances) and, when
asked, the Mann-Whitney p-values of every perturbation against this file's own controls. Memory is one
block of non-zero entries plus (groups x genes) summaries; the dense matrix is never built.
"""

import collections
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import dataclasses
import functools
import os

import numpy as np
import scipy.sparse as sp

from biojepac.eval import mwu
from biojepac.eval.inputs import Screen, gene_blocks

BLOCK_ENTRIES = 300_000
"""Target number of non-zero entries per gene block: about 25 MB of temporaries per block in flight, small
enough for malloc to reuse between blocks (fresh memory is slow to fault in, notably on VMs)."""
N_THREADS = min(4, len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else 2
"""Blocks processed at once (threads; numpy releases the GIL in the heavy parts)."""


@dataclasses.dataclass(frozen=True)
class Summary:
    """Per-group summaries of one file. Row 0 is the control, rows 1..P the perturbations."""

    n: np.ndarray
    """Cells per group, (groups,)."""
    mean: np.ndarray
    """Mean log1p expression per group, (groups x genes), float64."""
    var: np.ndarray
    """Unbiased (ddof=1) variance per group, (groups x genes); NaN for a group of one cell."""
    pval: np.ndarray | None
    """Mann-Whitney p-value of each perturbation vs control, (perts x genes); None if not computed."""

    @property
    def fdr(self) -> np.ndarray:
        return mwu.bh_fdr(self.pval)

    @property
    def lfc(self) -> np.ndarray:
        """pdex's log2 fold change of pseudobulks: log2(expm1(mean_pert) / expm1(mean_ctrl)), float32.

        pdex takes the means in float32 and casts the result to float32; we round the float64 means to
        float32 first so ties and infinities (a gene absent from the controls) fall where pdex puts them.
        0/0 (absent from both) is defined as 0, as in pdex.
        """
        m32 = self.mean.astype(np.float32).astype(np.float64)
        bulk = np.expm1(m32).astype(np.float32).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            lfc = np.log2(bulk[1:] / bulk[:1])
        return np.nan_to_num(lfc, nan=0.0, posinf=np.inf, neginf=-np.inf).astype(np.float32)


def summarize(screen: Screen, *, with_de: bool, n_threads: int = N_THREADS) -> Summary:
    """Group means, variances and (optionally) MWU p-values in one pass over blocks of genes.

    Blocks are independent, so `n_threads` of them run at once (numpy's sort and ufuncs release the GIL);
    at most 2 * n_threads blocks are in flight, which bounds memory.
    """
    _reuse_freed_memory()
    n = screen.n_cells_per_group
    n_groups, n_genes = len(n), screen.x.shape[1]
    sums = np.zeros((n_groups, n_genes))
    sumsq = np.zeros((n_groups, n_genes))
    pval = np.ones((n_groups - 1, n_genes)) if with_de else None
    nnz = screen.x.nnz if sp.issparse(screen.x) else np.count_nonzero(screen.x)
    block = int(np.clip(BLOCK_ENTRIES * n_genes // max(nnz, 1), 16, 1 << 16))

    def one_block(start, stop, rows, cols, vals):
        width = stop - start
        groups = screen.codes[rows]
        if with_de:  # the Mann-Whitney pass sums the values too
            block = mwu.block_stats(cols, vals, groups, n, width)
            sums[:, start:stop], sumsq[:, start:stop], pval[:, start:stop] = block.sums, block.sumsq, block.pval
            return
        flat = groups * width + cols
        v64 = vals.astype(np.float64)
        shape = (n_groups, width)
        sums[:, start:stop] = np.bincount(flat, weights=v64, minlength=n_groups * width).reshape(shape)
        sumsq[:, start:stop] = np.bincount(flat, weights=v64 * v64, minlength=n_groups * width).reshape(shape)

    with concurrent.futures.ThreadPoolExecutor(max(1, n_threads)) as pool:
        pending: collections.deque = collections.deque()
        for args in gene_blocks(screen.x, block):
            pending.append(pool.submit(one_block, *args))
            if len(pending) >= 2 * n_threads:
                pending.popleft().result()
        for fut in pending:
            fut.result()
    mean = sums / n[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.clip(sumsq - n[:, None] * mean**2, 0.0, None) / (n[:, None] - 1)
    return Summary(n, mean, var, pval)


@contextlib.contextmanager
def small_pages():
    """Turn off numpy's request for 2 MB pages while evaluating (usable as a decorator).

    numpy asks the kernel for huge pages (madvise) for every array of 4 MB or more; under the kernel's
    default `defrag=madvise` each such page fault may first compact memory. On the 2-core VM we measure
    on, that tripled the system time of an evaluation (4.0 s vs 1.4 s; wall 6.5 s vs 4.9 s). The arrays
    here are short-lived and read as streams, so they gain nothing from huge pages.
    """
    toggle = getattr(np._core.multiarray, "_set_madvise_hugepage", None)  # numpy's own switch
    previous = toggle(False) if toggle else None
    try:
        yield
    finally:
        if toggle:
            toggle(previous)


@functools.cache
def _reuse_freed_memory() -> None:
    """Ask glibc to keep block-sized temporaries in its heap and not hand freed memory back at once.

    By default every block's arrays (a few MB each) are mmapped and unmapped again, so each block pays page
    faults for fresh memory, which on a VM cost as much as the arithmetic. This keeps up to 256 MB of freed
    heap per process; matrix-sized arrays (> 32 MB) are still returned to the system when freed.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers
        libc.mallopt(m_mmap_threshold, 32 << 20)
        libc.mallopt(m_trim_threshold, 256 << 20)
    except (OSError, AttributeError):  # not glibc: only slower
        pass


def pdex_lfc(screen: Screen, pert_code: int, genes: np.ndarray) -> np.ndarray:
    """pdex's float32 log2 fold change for a few genes of one perturbation, reproduced bit for bit.

    Needed only to order genes whose |LFC| may tie at the top-N cut of DES. pdex averages in float32 in
    row order (sparse: scale each value by 1/n, then sum; dense: sum, then divide) and applies the C
    library's `expm1f`; we do the same on just these columns.
    """
    out = []
    for code in (pert_code, 0):
        rows = np.flatnonzero(screen.codes == code)
        sub = screen.x[:, genes][rows]  # columns first: cheap on CSC
        dtype = np.float32 if sub.dtype == np.float32 else np.float64
        acc = np.zeros(len(genes), dtype)
        if sp.issparse(sub):
            sub = sp.csc_matrix(sub)
            sub.sort_indices()  # row order within each gene = pdex's summation order
            cols = np.repeat(np.arange(len(genes)), np.diff(sub.indptr))
            np.add.at(acc, cols, sub.data.astype(dtype) * dtype(1.0 / len(rows)))
        else:
            for row in np.asarray(sub, dtype=dtype):
                acc += row
            acc = (acc.astype(np.float64) / len(rows)).astype(dtype)
        out.append((_expm1f(acc) if dtype == np.float32 else np.expm1(acc)).astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        lfc = np.log2(out[0] / out[1])
    return np.where(np.isnan(lfc), 0.0, lfc).astype(np.float32)


def _expm1f(x: np.ndarray) -> np.ndarray:
    """The C library's single-precision expm1 (what numba calls), which differs from numpy's in the last bit."""
    return np.frompyfunc(_libm_expm1f(), 1, 1)(x).astype(np.float32)


@functools.cache
def _libm_expm1f():
    # Looked up once: `find_library` runs `ldconfig` in a subprocess, and forking a process holding GBs is slow.
    fn = ctypes.CDLL(ctypes.util.find_library("m")).expm1f
    fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
    return fn
