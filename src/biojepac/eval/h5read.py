"""Read only what an evaluation needs from an .h5ad file: X, one obs column and the gene names.

Scoring needs three elements of the file; `anndata.read_h5ad` reads all of them (layers, obsm, uns) and
importing anndata alone takes seconds. This reads the three with h5py, following anndata's on-disk
format (X as a dense dataset or a csr/csc group; the obs column as a categorical or a string array; the
var index named by its `_index` attribute). Anything else, such as nullable columns or files written by
old anndata versions, falls back to `anndata.read_h5ad`, so every file anndata reads is still read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import mmap
import os
import pathlib
import sys
from typing import TYPE_CHECKING

import h5py
import numpy as np

from biojepac.errors import InputError

if TYPE_CHECKING:  # scipy.sparse (0.2 s to import) only for what `CSRArrays` cannot do
    import scipy.sparse as sp

MAX_GAP = 1 << 16
"""Bytes between two chunks in the file that one read still spans (read into scratch and dropped)."""
MAX_IOV = 1024
"""Buffers per `preadv` call (Linux's IOV_MAX)."""
SPARSE = ("csr_matrix", "csc_matrix")
"""The sparse encodings of X read here (anndata's names, also scipy's class names)."""


class _Unsupported(Exception):
    """An element this reader does not decode; the caller falls back to anndata."""


@dataclasses.dataclass
class CSRArrays:
    """A CSR matrix as read, without scipy.sparse: the attributes of `scipy.sparse.csr_matrix` that the
    checks, the normalisation and the summaries use, and `csr()` to make the scipy matrix (no copy) for
    anything else; selecting rows (`x[rows]`) makes it first. A VCC evaluation never needs scipy.sparse,
    whose import costs 0.2 s of CPU (and three times that while the reads pre-fault their buffers: the two
    wait on each other in the kernel)."""

    format = "csr"

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    shape: tuple[int, int]
    has_canonical_format: bool = False
    """Set by `inputs._canonical` once checked; handed to scipy, which then need not check again."""

    @property
    def nnz(self) -> int:
        return len(self.indices)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def has_sorted_indices(self) -> bool:
        """Known sorted (once found canonical); otherwise `sorted_indices()` makes the scipy matrix."""
        return self.has_canonical_format

    def sorted_indices(self) -> sp.csr_matrix:
        return self.csr().sorted_indices()

    def __getitem__(self, key) -> sp.csr_matrix:
        return self.csr()[key]

    def toarray(self) -> np.ndarray:
        return self.csr().toarray()

    def csr(self) -> sp.csr_matrix:
        import scipy.sparse as sp

        x = sp.csr_matrix((self.data, self.indices, self.indptr), shape=self.shape)
        x.has_canonical_format = self.has_canonical_format
        return x


def is_sparse(x) -> bool:
    """`CSRArrays`, or a scipy sparse matrix (which only exists once scipy.sparse is loaded: the question
    does not load it)."""
    if isinstance(x, CSRArrays):
        return True
    sp = sys.modules.get("scipy.sparse")
    return sp is not None and sp.issparse(x)


@dataclasses.dataclass(frozen=True)
class Parts:
    """The three elements of one input, as read (nothing checked yet but the obs column's presence)."""

    name: str
    """The file path, or a label for an AnnData in memory (for error messages)."""
    labels: np.ndarray
    """obs[pert_col] as str, one per cell."""
    genes: np.ndarray
    """var names as str."""
    x: sp.spmatrix | CSRArrays | np.ndarray | None
    """X as stored (CSR/CSC or dense); a CSR file's X as `CSRArrays`."""
    owned: bool
    """True when `x` was read here from a file (ours to modify); False for the caller's AnnData (only read)."""


def read_parts(src, pert_col: str, name: str = "") -> Parts:
    """`read_h5ad_parts` of a path, or `anndata_parts` of an AnnData in memory."""
    if isinstance(src, (str, pathlib.Path)):
        return Parts(name or str(src), *read_h5ad_parts(pathlib.Path(src), pert_col, csr_arrays=True), owned=True)
    name = name or "<AnnData>"
    return Parts(name, *anndata_parts(src, name, pert_col), owned=False)


def read_h5ad_parts(fpath: pathlib.Path, pert_col: str, csr_arrays: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, sp.spmatrix | CSRArrays | np.ndarray]:
    """(obs[pert_col] as str, gene names as str, X) of one file; X is CSR/CSC or dense, as stored, a CSR
    matrix as `CSRArrays` with `csr_arrays` (scipy.sparse not needed)."""
    if not fpath.is_file():
        raise InputError(f"{fpath}: file not found")
    try:
        with h5py.File(fpath, "r") as f, open(fpath, "rb", buffering=0) as raw:
            return _obs_column(f, fpath, pert_col), _var_names(f), _matrix(f, raw, csr_arrays)
    except _Unsupported:
        return _read_with_anndata(fpath, pert_col)
    except OSError as e:  # not HDF5 at all, or truncated
        raise InputError(f"{fpath}: not a readable .h5ad file ({e})") from None


def read_obs_column(fpath: pathlib.Path, col: str) -> np.ndarray:
    """One obs column of a file as str, without reading X."""
    if not fpath.is_file():
        raise InputError(f"{fpath}: file not found")
    try:
        with h5py.File(fpath, "r") as f:
            return _obs_column(f, fpath, col)
    except _Unsupported:
        import anndata as ad

        obs = ad.read_h5ad(fpath, backed="r").obs
        if col not in obs.columns:
            raise InputError(f"{fpath}: obs column {col!r} not found (have {list(obs.columns)})") from None
        return obs[col].astype(str).to_numpy()


def read_var_names(fpath: pathlib.Path) -> np.ndarray:
    """A file's gene names as str, without reading X."""
    if not fpath.is_file():
        raise InputError(f"{fpath}: file not found")
    try:
        with h5py.File(fpath, "r") as f:
            return _var_names(f)
    except _Unsupported:
        import anndata as ad

        return np.asarray(ad.read_h5ad(fpath, backed="r").var_names.astype(str))


def _obs_column(f: h5py.File, fpath: pathlib.Path, pert_col: str) -> np.ndarray:
    obs = f.get("obs")
    if not isinstance(obs, h5py.Group) or obs.attrs.get("encoding-type") != "dataframe":
        raise _Unsupported
    if pert_col not in obs:
        columns = [c for c in obs.keys() if c != obs.attrs.get("_index")]
        raise InputError(f"{fpath}: obs column {pert_col!r} not found (have {columns})")
    col = obs[pert_col]
    kind = col.attrs.get("encoding-type")
    if kind == "categorical":
        categories = _strings(col["categories"])
        codes = col["codes"][:]
        if (codes < 0).any():  # -1 is a missing value
            row = int(np.argmax(codes < 0))
            raise InputError(f"{fpath}: obs column {pert_col!r} is empty (NaN) for cell {row} ({int((codes < 0).sum())} such); "
                             "every cell needs a perturbation label")
        return categories[codes.astype(np.int64)]
    if kind == "string-array" or (kind == "array" and col.dtype.kind in "iufb"):
        return _strings(col) if kind == "string-array" else col[:].astype(str)
    raise _Unsupported


def _var_names(f: h5py.File) -> np.ndarray:
    var = f.get("var")
    if not isinstance(var, h5py.Group) or "_index" not in var.attrs:
        raise _Unsupported
    return _strings(var[var.attrs["_index"]])


def _matrix(f: h5py.File, raw, csr_arrays: bool) -> sp.spmatrix | CSRArrays | np.ndarray:
    x = f.get("X")
    if isinstance(x, h5py.Dataset):
        return _array(x, raw)
    kind = x.attrs.get("encoding-type") if isinstance(x, h5py.Group) else None
    if kind not in SPARSE:
        raise _Unsupported
    shape = tuple(int(n) for n in x.attrs["shape"])
    arrays = _array(x["data"], raw), _array(x["indices"], raw), _array(x["indptr"], raw)
    if csr_arrays and kind == "csr_matrix":
        return CSRArrays(*arrays, shape)
    import scipy.sparse as sp

    return getattr(sp, kind)(arrays, shape=shape)


def _array(ds: h5py.Dataset, raw) -> np.ndarray:
    """A dataset's values. Unfiltered (uncompressed) storage, as anndata writes by default, is copied from
    the file straight into the array, chunk by chunk: plain file reads release the GIL, so the real and the
    predicted file load in parallel, which h5py's global lock does not allow. Anything else goes to h5py."""
    layout = ds.id.get_create_plist().get_layout()
    plain = ds.compression is None and not ds.shuffle and not ds.fletcher32 and ds.scaleoffset is None
    if not plain or ds.dtype.byteorder == ">" or ds.dtype.kind not in "iuf" or ds.size == 0:
        return ds[()]
    out = prefaulted(ds.shape, ds.dtype)
    flat = out.reshape(-1).view(np.uint8)
    if layout == h5py.h5d.CONTIGUOUS:
        offset = ds.id.get_offset()
        if offset is None:  # never written: h5py returns the fill value
            return ds[()]
        _read_into(raw, offset, flat)
        return out
    if layout != h5py.h5d.CHUNKED or ds.ndim != 1:
        return ds[()]
    chunks = []
    ds.id.chunk_iter(lambda info: chunks.append((info.byte_offset, info.chunk_offset[0])))
    step, size = ds.chunks[0], ds.dtype.itemsize
    if len(chunks) * step < ds.shape[0]:  # unwritten chunks hold the fill value
        return ds[()]
    pieces = [(offset, flat[start * size : min(start + step, ds.shape[0]) * size]) for offset, start in sorted(chunks)]
    _read_pieces(raw, pieces)
    return out


def prefaulted(shape: tuple, dtype: np.dtype) -> np.ndarray:
    """An uninitialised array whose memory the kernel maps in one call (Linux's MAP_POPULATE) instead of one
    page fault per 4 KiB page as it is first written (by a read, or as scratch memory): 0.14 s instead of
    0.175 s for 194 MB here. The kernel populates one mapping at a time across threads (two 195 MB
    buffers: 0.151 s on two threads, 0.079 s for one), but faulting the pages from both threads instead
    cost more CPU and was not faster end to end (command line, median 2.08 against 2.01 s)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes < 1 << 22 or not hasattr(mmap, "MAP_POPULATE"):
        return np.empty(shape, dtype)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
    return np.frombuffer(buf, dtype).reshape(shape)  # the array keeps the mapping alive


def _read_pieces(raw, pieces: list[tuple[int, np.ndarray]]) -> None:
    """Fill each (file offset, buffer) piece, taken in file order, with as few system calls as possible.

    Chunks mostly follow each other in the file with small gaps (the chunk index in between): one
    scattered read (`preadv`) covers a run of them, gaps read into a scratch buffer. Fewer calls means
    fewer waits for the GIL while other threads hold it.
    """
    scratch = np.empty(MAX_GAP, np.uint8)
    i = 0
    while i < len(pieces):
        start, buffers, end = pieces[i][0], [], pieces[i][0]
        while i < len(pieces) and len(buffers) < MAX_IOV - 1 and 0 <= pieces[i][0] - end <= MAX_GAP:
            if pieces[i][0] > end:
                buffers.append(scratch[: pieces[i][0] - end])
            buffers.append(pieces[i][1])
            end = pieces[i][0] + len(pieces[i][1])
            i += 1
        if os.preadv(raw.fileno(), buffers, start) != end - start:  # short read: finish piece by piece
            offset = start
            for buf in buffers:
                if buf.base is not scratch:
                    _read_into(raw, offset, buf)
                offset += len(buf)


def _read_into(raw, offset: int, view: np.ndarray) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(raw.fileno(), [view[done:]], offset + done)
        if n <= 0:
            raise OSError(f"unexpected end of file at byte {offset + done}")
        done += n


def _strings(ds: h5py.Dataset) -> np.ndarray:
    if ds.dtype.kind in "OSU" or h5py.check_string_dtype(ds.dtype) is not None:
        return np.asarray(ds.asstr()[:], dtype=str)
    return ds[:].astype(str)


def _read_with_anndata(fpath: pathlib.Path, pert_col: str):
    import anndata as ad  # slow to import; only for files the fast path does not decode

    return anndata_parts(ad.read_h5ad(fpath), str(fpath), pert_col)


def anndata_parts(adata, name: str, pert_col: str) -> tuple[np.ndarray, np.ndarray, sp.spmatrix | np.ndarray]:
    """The same three parts of an AnnData object in memory (X as it is, not copied)."""
    if pert_col not in adata.obs.columns:
        raise InputError(f"{name}: obs column {pert_col!r} not found (have {list(adata.obs.columns)})")
    labels = adata.obs[pert_col]
    if labels.isna().any():
        raise InputError(f"{name}: obs column {pert_col!r} is empty (NaN) for cell {str(labels.index[labels.isna().argmax()])!r} "
                         f"({int(labels.isna().sum())} such); every cell needs a perturbation label")
    return labels.astype(str).to_numpy(), np.asarray(adata.var_names.astype(str)), adata.X


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
