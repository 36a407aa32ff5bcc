"""`biojepac submit`: validate a prediction against the VCC's requirements and package it as a `.vcc`.

The requirements and the layout are those of cell-eval 0.8.2's `prep` (`_cli/_prep.py`, `strip_anndata`):
- the perturbation column (default `target_gene`) exists and contains the control label (`non-targeting`);
- the genes equal the gene list (a header-less CSV, first column; 18,080 genes for the VCC) in the same
  order; the same set in another order is reordered, anything else is an error listing missing/extra genes;
- at most 200,000 cells;
- X stored as CSR float32 (encoding 32, the default) or float64 (encoding 64);
- values: cell-eval guesses counts vs log1p from fractional parts (> 1e-3), as our one rule
  (`data.values.classify`) does. Values must be >= 0, and log1p data < 15. Integer data is treated as
  counts and converted to normalize_total(median of all cells' totals, as scanpy does for CSR) + log1p,
  unless `allow_discrete`, which keeps the values as given;
- obs is reduced to the perturbation column (and optionally a cell-type column) with index "0".."n-1";
  var to the gene index;
- the `.h5ad` is compressed with `zstd -T0` to `pred.h5ad.zst` and put in an uncompressed tar with
  `watermark.txt` containing `vcc-prep`.

Unlike cell-eval (which loads the whole file and copies X several times), X is streamed in row blocks:
one pass to scan values and totals, one to write, so memory holds one block plus the output buffers.
"""

import dataclasses
import logging
import os
import pathlib
import shutil
import subprocess
import tarfile
import tempfile
from typing import Literal

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from biojepac.data import schema
from biojepac.data.load import check_input_file, open_h5
from biojepac.data.values import classify, is_fractional, size_factors, target_sum
from biojepac.errors import InputError
from biojepac.eval.vcc2026 import INTEGRAL_ATOL, MAX_CELL_TOTAL
from biojepac.io import remove_stale_temps

logger = logging.getLogger(__name__)

EXPECTED_GENE_DIM = 18080
EXPECTED_GENE_DIM_2026 = 18533
MAX_CELL_DIM = 200_000


@dataclasses.dataclass(frozen=True)
class SubmitConfig:
    pred: pathlib.Path
    """Predicted cells (.h5ad), e.g. from `biojepac predict`."""
    genes: pathlib.Path
    """Gene list CSV without a header (the challenge's gene_names.csv): expected genes in order."""
    out: pathlib.Path
    """Output: the .vcc package (--format vcc) or the submission .h5ad (--format vcc2026)."""
    pert_col: str = schema.PERT_COL
    """obs column with the perturbation label."""
    control: str = schema.CONTROL
    """Label of the control cells, which must be present."""
    celltype_col: str | None = None
    """Optional obs column with the cell type, kept as `celltype` in the package."""
    encoding: Literal[32, 64] = 32
    """Float bits in the package: 32 or 64."""
    expected_gene_dim: int = EXPECTED_GENE_DIM
    """Genes the challenge expects; a different gene list only warns (as cell-eval does). -1 disables."""
    max_cell_dim: int = MAX_CELL_DIM
    """Most cells allowed; -1 disables."""
    allow_discrete: bool = False
    """Keep the values as given: integer-valued data is not normalised as counts, and the log1p range is not checked."""
    block_rows: int = 8192
    """Rows streamed per block (memory ~ block_rows x genes floats)."""
    format: Literal["vcc", "vcc2026"] = "vcc"
    """vcc: VCC 2025's .vcc package (log1p, as cell-eval prep); vcc2026: raw counts checked as cell-eval2 does."""
    requests: pathlib.Path | None = None
    """vcc2026: CSV with a target_gene column; the prediction's labels (besides the control) must be exactly these."""


def run_submit(cfg: SubmitConfig) -> pathlib.Path:
    if cfg.format == "vcc2026":
        return write_vcc2026(cfg)
    if shutil.which("zstd") is None:
        raise InputError("the `zstd` program is needed to compress the package (apt-get install zstd)")
    genes = read_gene_list(cfg.genes)
    if cfg.out.is_dir():
        raise InputError(f"--out {cfg.out}: is a folder; give the .vcc file to write")
    with open_h5(cfg.pred) as f:
        obs, var_names = _read_obs_var(f, cfg)
        col_order = check_prediction(obs, var_names, genes, cfg)
        x = _RowReader(f["X"], str(cfg.pred))
        scale = scan_submission_values(x, col_order, cfg, var_names)
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(cfg.out)  # what a killed earlier run left; the pid in the name marks ours
        with tempfile.TemporaryDirectory(dir=cfg.out.parent, prefix=f".{cfg.out.name}.tmp{os.getpid()}-") as tmp:
            h5_fpath = pathlib.Path(tmp) / "pred.h5ad"
            new_obs = pd.DataFrame({schema.PERT_COL: obs[cfg.pert_col].to_numpy()},
                                   index=np.arange(len(obs)).astype(str))
            if cfg.celltype_col:
                new_obs["celltype"] = obs[cfg.celltype_col].to_numpy()
            write_streamed_h5ad(h5_fpath, x, col_order, scale, new_obs, genes, cfg)
            package(pathlib.Path(tmp), cfg.out)
    print(f"wrote {cfg.out}: {len(obs)} cells x {len(genes)} genes, float{cfg.encoding}, "
          f"{'normalised counts' if scale is not None else 'log1p as given'}")
    return cfg.out


def read_gene_list(fpath: pathlib.Path) -> list[str]:
    """First column of a header-less CSV, as cell-eval reads it (`pl.read_csv(has_header=False)`)."""
    check_input_file(fpath)
    try:
        genes = pd.read_csv(fpath, header=None, dtype=str, keep_default_na=False).iloc[:, 0].tolist()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"{fpath}: not a readable gene list CSV ({str(e).strip().splitlines()[0]})") from None
    blank = [i + 1 for i, g in enumerate(genes) if not g.strip()]
    if blank:
        raise InputError(f"{fpath}: blank gene name on line(s) {blank[:5]}")
    if len(set(genes)) != len(genes):
        raise InputError(f"{fpath}: duplicate genes in the gene list, e.g. {pd.Series(genes)[pd.Series(genes).duplicated()].iloc[0]!r}")
    return genes


def check_prediction(obs: pd.DataFrame, var_names: list[str], genes: list[str], cfg: SubmitConfig) -> np.ndarray:
    """Validate obs and genes; return the column order that puts the prediction's genes in list order."""
    where = str(cfg.pred)
    if cfg.pert_col not in obs.columns:
        raise InputError(f"{where}: obs has no perturbation column {cfg.pert_col!r} (columns: {list(obs.columns)})")
    if cfg.celltype_col and cfg.celltype_col not in obs.columns:
        raise InputError(f"{where}: obs has no cell-type column {cfg.celltype_col!r}")
    labels = obs[cfg.pert_col]
    blank = labels.isna().to_numpy() | (labels.astype(str).str.strip() == "").to_numpy()
    if blank.any():
        raise InputError(f"{where}: obs column {cfg.pert_col!r} is empty (NaN or blank) for cell {str(obs.index[blank.argmax()])!r} "
                         f"({int(blank.sum())} such); every cell needs a perturbation label")
    if not (labels.astype(str) == cfg.control).any():
        raise InputError(f"{where}: no control cells: label {cfg.control!r} missing from column {cfg.pert_col!r}")
    if cfg.expected_gene_dim != -1 and len(genes) != cfg.expected_gene_dim:
        logger.warning(f"{cfg.genes}: {len(genes)} genes, not the challenge's {cfg.expected_gene_dim}")
    schema.check_gene_names(var_names, where)
    if var_names != genes:
        missing, extra = sorted(set(genes) - set(var_names)), sorted(set(var_names) - set(genes))
        if missing or extra or len(var_names) != len(genes):
            raise InputError(f"{where}: genes do not match {cfg.genes}: missing {missing[:10]} "
                             f"({len(missing)} in all), extra {extra[:10]} ({len(extra)} in all)")
    if cfg.max_cell_dim != -1 and len(obs) > cfg.max_cell_dim:
        raise InputError(f"{where}: {len(obs)} cells exceed the maximum of {cfg.max_cell_dim}")
    if cfg.encoding not in (32, 64):
        raise InputError(f"--encoding must be 32 or 64, got {cfg.encoding}")
    index = {g: i for i, g in enumerate(var_names)}
    return np.asarray([index[g] for g in genes], np.int64)


def scan_submission_values(x: "_RowReader", col_order: np.ndarray, cfg: SubmitConfig,
                           var_names: list[str] | None = None) -> np.ndarray | None:
    """First pass: the counts-vs-log1p rule (`values.classify`) and range checks. Returns per-row divisors
    (total / target, as scanpy computes them) when the data are counts to normalise, else None."""
    dtype = np.float32 if cfg.encoding == 32 else np.float64
    has_frac, lo, hi, totals, nnz, start = False, np.inf, -np.inf, [], 0, 0
    for block in x.blocks(cfg.block_rows):
        nnz += block.nnz
        data = block.data.astype(dtype)
        bad = ~np.isfinite(data) | (data < 0)
        if bad.any():  # name the first bad value's cell and gene
            j = int(np.flatnonzero(bad)[0])
            row, col = start + int(np.searchsorted(block.indptr, j, side="right") - 1), int(block.indices[j])
            gene = repr(var_names[col]) if var_names is not None else str(col)
            what = "a negative" if np.isfinite(data[j]) else "a NaN/inf"
            raise InputError(f"{cfg.pred}: X has {what} value {float(data[j])} at cell {row}, gene {gene}; "
                             "a submission holds counts or log1p values, all finite and >= 0")
        start += block.shape[0]
        has_frac = has_frac or bool(np.any(is_fractional(data)))
        if data.size:
            lo, hi = min(lo, float(data.min())), max(hi, float(data.max()))
        totals.append(np.asarray(block.astype(dtype).sum(1)).ravel())
    # cell-eval takes min/max of a CSR matrix, which count its implicit zeros too.
    if nnz < x.shape[0] * x.shape[1]:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if lo < 0:
        raise InputError(f"{cfg.pred}: min value {lo:.2f} is negative; neither counts nor log1p")
    if cfg.allow_discrete:
        return None
    kind = classify(hi, not has_frac, str(cfg.pred), hint="mixed or raw scales? allow_discrete keeps the values as given")
    if kind == "log1p":
        return None
    totals = np.concatenate(totals) if totals else np.zeros(0, dtype)
    target = target_sum(totals, "median", str(cfg.pred), median_over="all")  # scanpy's CSR path: zero-count cells included
    logger.info(f"{cfg.pred}: integer data, treated as counts: normalize_total(target={target}) + log1p")
    return size_factors(totals, target)  # zero-count rows have no stored values to divide


def write_streamed_h5ad(fpath: pathlib.Path, x: "_RowReader", col_order: np.ndarray, scale: np.ndarray | None,
                        obs: pd.DataFrame, genes: list[str], cfg: SubmitConfig) -> None:
    """Minimal AnnData (obs, var, CSR X) written block by block through anndata's own sparse appender."""
    dtype = np.float32 if cfg.encoding == 32 else np.float64
    ad.AnnData(obs=obs, var=pd.DataFrame(index=pd.Index(genes, dtype=str))).write_h5ad(fpath)
    in_order = np.array_equal(col_order, np.arange(len(col_order)))
    with h5py.File(fpath, "r+") as f:
        first, start = True, 0
        for block in x.blocks(cfg.block_rows):
            block = (block if in_order else block[:, col_order]).astype(dtype)
            if scale is not None:
                # Same arithmetic as scanpy: each value divided by (row total / target), then log1p.
                per_value = np.repeat(scale[start : start + block.shape[0]], np.diff(block.indptr))
                block.data = np.log1p((block.data / per_value).astype(dtype))
            block.sort_indices()
            if first:
                ad.io.write_elem(f, "X", block)
                first = False
            else:
                ad.io.sparse_dataset(f["X"]).append(block)
            start += block.shape[0]
        if first:  # zero rows
            ad.io.write_elem(f, "X", sp.csr_matrix((0, len(genes)), dtype=dtype))


def package(dpath: pathlib.Path, out: pathlib.Path) -> None:
    """zstd the h5ad, add the watermark, tar both (uncompressed), and move the tar into place atomically."""
    h5_fpath = dpath / "pred.h5ad"
    proc = subprocess.run(["zstd", "-T0", "-q", "-f", "--rm", str(h5_fpath)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise InputError(f"zstd failed on {h5_fpath}: {proc.stderr.strip()}")
    (dpath / "watermark.txt").write_text("vcc-prep")
    tmp_tar = dpath / "package.vcc"
    with tarfile.open(tmp_tar, "w", format=tarfile.GNU_FORMAT) as tar:
        for name in ("pred.h5ad.zst", "watermark.txt"):
            tar.add(dpath / name, arcname=name)
    os.replace(tmp_tar, out)


class _RowReader:
    """Row blocks of X from an open h5ad, as CSR, whatever the stored layout (dense, CSR, CSC)."""

    def __init__(self, node, where: str):
        self.node, self.where = node, where
        if isinstance(node, h5py.Dataset):
            self.kind, self.shape = "dense", node.shape
        else:
            enc = node.attrs.get("encoding-type", "")
            if enc not in ("csr_matrix", "csc_matrix"):
                raise InputError(f"{where}: X has unsupported encoding {enc!r}")
            self.kind, self.shape = enc, tuple(node.attrs["shape"])
            if enc == "csc_matrix":
                logger.warning(f"{where}: X is CSC; reading it by rows needs it in memory once")
                parts = (_widen(node["data"][:]), node["indices"][:], node["indptr"][:])
                self.csr = sp.csc_matrix(parts, shape=self.shape).tocsr()

    def blocks(self, block_rows: int):
        n = self.shape[0]
        for a in range(0, n, block_rows):
            b = min(a + block_rows, n)
            if self.kind == "dense":
                yield sp.csr_matrix(_widen(self.node[a:b]))
            elif self.kind == "csc_matrix":
                yield self.csr[a:b]
            else:
                ptr = self.node["indptr"][a : b + 1]
                data = _widen(self.node["data"][ptr[0] : ptr[-1]])
                idx = self.node["indices"][ptr[0] : ptr[-1]]
                yield sp.csr_matrix((data, idx, ptr - ptr[0]), shape=(b - a, self.shape[1]))


def _widen(values: np.ndarray) -> np.ndarray:
    """float16 as float32 (exact): scipy.sparse has no float16, and cell-eval reads it as float32 too."""
    return values.astype(np.float32) if values.dtype == np.float16 else values


def _read_obs_var(f: h5py.File, cfg: SubmitConfig) -> tuple[pd.DataFrame, list[str]]:
    obs = ad.io.read_elem(f["obs"])
    var = ad.io.read_elem(f["var"])
    return obs, [str(g) for g in var.index]


def write_vcc2026(cfg: SubmitConfig) -> pathlib.Path:
    """A VCC 2026 submission: raw counts (non-negative, within 1e-6 of an integer, no cell total above 1e6),
    the gene list's genes in its order (a permuted prediction is reordered), the control present and, with
    `--requests`, exactly the requested labels. Written as an .h5ad (X CSR, obs = the perturbation column and
    the optional cell-type column, var = the genes), values as given; streamed in row blocks."""
    if cfg.out.suffix != ".h5ad":
        raise InputError(f"--out {cfg.out}: a VCC 2026 submission is an .h5ad")
    genes = read_gene_list(cfg.genes)
    dim = EXPECTED_GENE_DIM_2026 if cfg.expected_gene_dim == EXPECTED_GENE_DIM else cfg.expected_gene_dim
    check_cfg = dataclasses.replace(cfg, expected_gene_dim=dim, max_cell_dim=-1)
    with h5py.File(cfg.pred, "r") as f:
        obs, var_names = _read_obs_var(f, cfg)
        col_order = check_prediction(obs, var_names, genes, check_cfg)
        _check_labels(obs[cfg.pert_col].astype(str).to_numpy(), cfg)
        x = _RowReader(f["X"], str(cfg.pred))
        start = 0
        for block in x.blocks(cfg.block_rows):
            _check_counts(block, start, cfg)
            start += block.shape[0]
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(cfg.out)
        with tempfile.TemporaryDirectory(dir=cfg.out.parent, prefix=f".{cfg.out.name}.tmp{os.getpid()}-") as tmp:
            h5_fpath = pathlib.Path(tmp) / "pred.h5ad"
            new_obs = pd.DataFrame({cfg.pert_col: obs[cfg.pert_col].astype(str).to_numpy()},
                                   index=np.arange(len(obs)).astype(str))
            if cfg.celltype_col:
                new_obs[cfg.celltype_col] = obs[cfg.celltype_col].astype(str).to_numpy()
            write_streamed_h5ad(h5_fpath, x, col_order, None, new_obs, genes, cfg)
            os.replace(h5_fpath, cfg.out)
    print(f"wrote {cfg.out}: {len(obs)} cells x {len(genes)} genes, raw counts, float{cfg.encoding}")
    return cfg.out


def _check_counts(block: sp.csr_matrix, start: int, cfg: SubmitConfig) -> None:
    """cell-eval2's input checks on one row block: finite, non-negative, integral to 1e-6, cell totals <= 1e6."""
    d = block.data.astype(np.float64)
    bad = ~np.isfinite(d) | (d < 0) | (np.abs(d - np.rint(d)) > INTEGRAL_ATOL)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        row = start + int(np.searchsorted(block.indptr, j, side="right") - 1)
        raise InputError(f"{cfg.pred}: cell {row}, gene column {block.indices[j]} holds {d[j]!r}: VCC 2026 takes raw "
                         "counts (non-negative integers); `biojepac predict --counts-depth N` samples counts")
    totals = np.asarray(block.sum(axis=1)).ravel()
    if totals.size and totals.max() > MAX_CELL_TOTAL:
        row = start + int(np.argmax(totals))
        raise InputError(f"{cfg.pred}: cell {row} totals {totals.max():.0f} counts, above {MAX_CELL_TOTAL:.0f}")


def _check_labels(labels: np.ndarray, cfg: SubmitConfig) -> None:
    if cfg.requests is None:
        return
    if not cfg.requests.is_file():
        raise InputError(f"--requests {cfg.requests}: file not found")
    want = pd.read_csv(cfg.requests, dtype=str, keep_default_na=False)
    if "target_gene" not in want.columns:
        raise InputError(f"--requests {cfg.requests}: no target_gene column")
    want_set = set(want["target_gene"]) - {cfg.control}
    have = set(labels) - {cfg.control}
    if have != want_set:
        raise InputError(f"{cfg.pred}: labels differ from {cfg.requests}: missing {sorted(want_set - have)[:10]}, "
                         f"extra {sorted(have - want_set)[:10]}")
