"""Out-of-core `data prepare`: normalise, log1p, select HVGs, harmonise genes and pseudobulk a screen
that does not fit in memory, writing a chunked CSR `.h5ad` that `data.stream` reads block by block.

The matrix is a Dask array over the backed file (`anndata.experimental.read_elem_lazy`, CSR chunks of
`chunk_rows` cells), so at most a few chunks are in memory at once. Three passes over the rows:
1. per-cell totals (and the counts-vs-log1p check), giving the normalisation target;
2. per-gene sum and sum of squares of the values HVG selection looks at, reduced as a Dask tree;
3. the normalised log1p rows restricted to the HVGs, appended to the output, and the pseudobulk sums.
Every number follows the in-memory path (`normalize.normalize_log1p` + `normalize.select_hvg`, i.e. scanpy)
operation by operation and dtype by dtype, so the outputs agree to float32 precision with identical
HVG sets; `tests/data/test_ooc.py` checks that.
"""

import dataclasses
import os
import pathlib
import typing

import anndata as ad
import dask
import dask.array as da
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from biojepac.data import schema
from biojepac.data.load import ScreenColumns, canonical_obs, open_h5, validate_labels
from biojepac.data.pairing import group_codes
from biojepac.data.values import Expect, classify, is_fractional, size_factors, target_sum
from biojepac.errors import InputError
from biojepac.io import temp_sibling


@dataclasses.dataclass(frozen=True)
class OocConfig:
    target: typing.Literal["median"] | float = "median"
    """normalize_total target: the median total of cells with counts, or a fixed value such as 1e4."""
    expect: Expect = "auto"
    """What X holds; `auto` decides by the one rule, `values.classify`."""
    n_top_genes: int = 2000
    """Highly variable genes to keep (0 or >= n_genes: keep all genes)."""
    hvg_flavor: typing.Literal["seurat", "cell_ranger"] = "seurat"
    """scanpy HVG flavour (both read log1p data; seurat_v3 needs raw counts and scikit-misc, not supported here)."""
    symbols: str = ""
    """Gene symbol table for harmonisation (`data.genes`; `packaged`: the one shipped with biojepac); empty: keep names."""
    pseudobulk_keys: tuple[str, ...] = (schema.CONTEXT_COL, schema.PERT_COL)
    """obs columns to pseudobulk by (empty: skip); means land in `uns['pseudobulk']`."""
    chunk_rows: int = 8192
    """Cells per Dask chunk: memory scales with this, not with the file."""
    out_chunk_nnz: int = 1 << 18
    """HDF5 chunk length of the output's `data`/`indices` (the loader reads whole row blocks)."""
    n_workers: int = 1
    """Dask threads."""


def prepare_out_of_core(src_fpath: str | pathlib.Path, dst_fpath: str | pathlib.Path, cfg: OocConfig = OocConfig()) -> dict:
    """Write the prepared screen to `dst_fpath` (atomically) and return a summary of what was done."""
    src_fpath, dst_fpath = pathlib.Path(src_fpath), pathlib.Path(dst_fpath)
    if dst_fpath.is_dir():
        raise InputError(f"--out {dst_fpath}: is a folder; give the .h5ad file to write")
    with open_h5(src_fpath) as f, dask.config.set(scheduler="threads", num_workers=cfg.n_workers):
        x = ad.experimental.read_elem_lazy(f["X"], chunks=(cfg.chunk_rows, -1))
        x = x.astype(np.float32) if x.dtype == np.float16 else x  # scipy.sparse has no float16
        obs, var = ad.io.read_elem(f["obs"]), ad.io.read_elem(f["var"])
        validate_labels(canonical_obs(obs, ScreenColumns(), str(src_fpath)), var.index, str(src_fpath))
        uns = ad.io.read_elem(f["uns"]) if "uns" in f else {}
        prov = dict(uns.get(schema.UNS_KEY, {}))
        blocks = x.to_delayed().ravel()

        # Pass 1: totals (float64 sum rounded to float32, as scanpy's normalize_total), max and the integer check.
        parts = dask.compute(*[dask.delayed(row_facts)(b) for b in blocks])
        if any(p[3] is not None for p in parts):
            _refuse_bad_values(parts, x.chunks[0], src_fpath, obs, var)
        totals = np.concatenate([p[0] for p in parts])
        if cfg.expect == "auto":
            vmax = max([p[1] for p in parts], default=0.0)
            hint = "set expect='log1p' or 'counts' if you know better"
            is_counts = classify(vmax, not any(p[2] for p in parts), str(src_fpath), hint=hint) == "counts"
        else:
            is_counts = cfg.expect == "counts"
        factor, transform = _scale(totals, is_counts, cfg, src_fpath)

        # Pass 2: per-gene moments of what HVG selection reads (expm1 of log1p for seurat).
        hvg = var_mask = None
        keep_all = cfg.n_top_genes <= 0 or cfg.n_top_genes >= x.shape[1]
        if not keep_all:
            offsets = np.cumsum([0] + [len(p[0]) for p in parts])
            moments = [da.from_delayed(dask.delayed(_moments)(b, factor[a:z], cfg.hvg_flavor), (3, x.shape[1]), np.float64)
                       for b, a, z in zip(blocks, offsets[:-1], offsets[1:])]
            s, ss, _ = da.stack(moments).sum(0).compute()
            hvg = hvg_from_moments(s, ss, x.shape[0], cfg.n_top_genes, cfg.hvg_flavor)
            var_mask = hvg["highly_variable"].to_numpy()
        else:
            var_mask = np.ones(x.shape[1], dtype=bool)

        out_var = var.loc[var_mask].copy()
        if hvg is not None:
            out_var = out_var.join(hvg.loc[var_mask].set_axis(out_var.index))
        if cfg.symbols:
            out_var, prov["gene_map"], obs, prov["label_map"] = _harmonise(out_var, obs, cfg.symbols)

        # Pass 3: the prepared rows, appended chunk by chunk, and pseudobulk sums over the same rows.
        keys = tuple(cfg.pseudobulk_keys)
        missing = [k for k in keys if k not in obs.columns]
        if missing:
            raise InputError(f"{src_fpath}: obs has no column {missing[0]!r} to pseudobulk by")
        groups, codes = group_codes(obs, keys) if keys else (None, None)
        tmp_fpath = temp_sibling(dst_fpath)  # hidden; removed by the next run if this one is killed
        pb_sums = np.zeros((len(groups), int(var_mask.sum()))) if keys else None
        try:
            with h5py.File(tmp_fpath, "w") as out:
                writer = CsrWriter(out, int(var_mask.sum()), cfg.out_chunk_nnz)
                row0 = 0
                for b in blocks:
                    chunk = _prepared(b.compute(), factor, row0, is_counts, var_mask)
                    writer.append(chunk)
                    if keys:
                        n_rows = chunk.shape[0]
                        ind = sp.csr_matrix((np.ones(n_rows), (codes[row0 : row0 + n_rows], np.arange(n_rows))), shape=(len(groups), n_rows))
                        pb_sums += np.asarray((ind @ chunk.astype(np.float64)).todense())
                    row0 += chunk.shape[0]
                writer.close(row0)
                out_obs = obs.copy()
                out_obs["total_counts"] = totals
                prov["transform"] = transform
                prov["hvg"] = {"n_top": int(cfg.n_top_genes), "flavor": cfg.hvg_flavor, "n_selected": int(var_mask.sum())}
                prov["prepared_out_of_core"] = {"source": str(src_fpath), "chunk_rows": cfg.chunk_rows}
                out_uns = {**{k: v for k, v in uns.items() if k != schema.UNS_KEY}, schema.UNS_KEY: prov}
                if keys:
                    n_cells = np.bincount(codes, minlength=len(groups))
                    out_uns["pseudobulk"] = {"groups": groups.assign(n_cells=n_cells), "means": pb_sums / n_cells[:, None]}
                out.attrs["encoding-type"], out.attrs["encoding-version"] = "anndata", "0.1.0"
                ad.io.write_elem(out, "obs", out_obs)
                ad.io.write_elem(out, "var", out_var)
                ad.io.write_elem(out, "uns", out_uns)
            os.replace(tmp_fpath, dst_fpath)
        finally:
            tmp_fpath.unlink(missing_ok=True)  # gone after a failure; already renamed after success
    return {"n_cells": int(x.shape[0]), "n_genes_in": int(x.shape[1]), "n_genes_out": int(var_mask.sum()), "transform": transform}


def _as_csr(block) -> sp.csr_matrix:
    return block if isinstance(block, sp.csr_matrix) else sp.csr_matrix(np.asarray(block))


def row_facts(block) -> tuple[np.ndarray, float, bool, tuple[int, int, float] | None]:
    """Per-row totals, the largest value, whether any value is fractional, and the first NaN / inf /
    negative value as (row in block, gene index, value), or None."""
    m = _as_csr(block)
    bad = np.flatnonzero(~(m.data >= 0) | (m.data == np.inf))  # NaN fails `>= 0` too
    if bad.size:
        j = int(bad[0])
        return None, 0.0, False, (int(np.searchsorted(m.indptr, j, side="right") - 1), int(m.indices[j]), float(m.data[j]))
    totals = np.add.reduceat(m.data.astype(np.float64), m.indptr[:-1]) if m.nnz else np.zeros(m.shape[0])
    totals[np.diff(m.indptr) == 0] = 0.0  # reduceat repeats the next value for empty rows
    return totals.astype(np.float32), float(m.data.max(initial=0.0)), bool(is_fractional(m.data).any()), None


def _refuse_bad_values(parts, block_rows, src_fpath, obs: pd.DataFrame, var: pd.DataFrame) -> None:
    """The first NaN, inf or negative value in file order, as one line naming the cell and gene."""
    for part, row0 in zip(parts, np.cumsum([0, *block_rows])):
        if part[3] is not None:
            row, col, value = part[3]
            what = "negative" if value < 0 and np.isfinite(value) else "non-finite"
            raise InputError(f"{src_fpath}: {what} value {value:g} at cell {str(obs.index[row0 + row])!r}, "
                             f"gene {str(var.index[col])!r}; expression must be finite and >= 0")


def _scale(totals: np.ndarray, is_counts: bool, cfg: OocConfig, src_fpath) -> tuple[np.ndarray | None, dict]:
    """Per-cell divisor `total / target` in float32, as `sc.pp.normalize_total`, and the provenance."""
    if not is_counts:
        return None, {"input": "log1p", "applied": "none"}
    total = target_sum(totals, cfg.target, str(src_fpath))
    return size_factors(totals, total), {"input": "counts", "applied": "normalize_total+log1p", "target": str(cfg.target), "target_sum": total}


def _prepared(block, factor: np.ndarray | None, row0: int, is_counts: bool, var_mask: np.ndarray) -> sp.csr_matrix:
    """log1p(x / factor) in float32 (or x as float32 when already log1p), restricted to `var_mask`."""
    m = _as_csr(block).astype(np.float32)
    if is_counts:
        f = factor[row0 : row0 + m.shape[0]]
        m.data = np.log1p(m.data / np.repeat(f, np.diff(m.indptr)))
    return m[:, var_mask] if not var_mask.all() else m


def _moments(block, factor, flavor: str) -> np.ndarray:
    """Per-gene (sum, sum of squares, nnz) in float64 of expm1(log1p x) (seurat) or log1p x (cell_ranger)."""
    m = _prepared(block, factor, 0, factor is not None, np.ones(block.shape[1], dtype=bool))
    vals = np.expm1(m.data) if flavor == "seurat" else m.data
    vals = vals.astype(np.float64)
    n_genes = m.shape[1]
    return np.stack([np.bincount(m.indices, vals, n_genes), np.bincount(m.indices, vals**2, n_genes), np.bincount(m.indices, minlength=n_genes)])


def hvg_from_moments(s: np.ndarray, ss: np.ndarray, n_cells: int, n_top: int, flavor: str, n_bins: int = 20) -> pd.DataFrame:
    """scanpy's single-batch `highly_variable_genes(n_top_genes=...)` from per-gene sum and sum of squares."""
    mean = s / n_cells
    var = (ss / n_cells - mean**2) * (n_cells / (n_cells - 1))  # R's unbiased estimator, as scanpy
    mean[mean == 0] = 1e-12
    disp = var / mean
    if flavor == "seurat":
        disp[disp == 0] = np.nan
        disp = np.log(disp)
        mean = np.log1p(mean)
    df = pd.DataFrame({"means": mean, "dispersions": disp})
    bins = n_bins if flavor == "seurat" else np.r_[-np.inf, np.percentile(mean, np.arange(10, 105, 5)), np.inf]
    df["mean_bin"] = pd.cut(df["means"], bins=bins)
    grouped = df.groupby("mean_bin", observed=True)["dispersions"]
    if flavor == "seurat":
        stats = grouped.agg(avg="mean", dev="std")
        single = stats["dev"].isnull()  # a bin with one gene: its normalised dispersion is 1
        stats.loc[single, "dev"], stats.loc[single, "avg"] = stats.loc[single, "avg"], 0
    else:
        from statsmodels.robust import mad

        stats = grouped.agg(avg="median", dev=mad)
    stats = stats.loc[df["mean_bin"]].set_index(df.index)
    norm = ((df["dispersions"] - stats["avg"]) / stats["dev"]).to_numpy()
    finite = norm[~np.isnan(norm)]
    cut = np.sort(finite)[::-1][min(n_top, finite.size) - 1]
    df["dispersions_norm"] = norm
    df["highly_variable"] = np.nan_to_num(norm, nan=-np.inf) >= cut
    return df.drop(columns="mean_bin")


def _harmonise(var: pd.DataFrame, obs: pd.DataFrame, table_fpath: str):
    """Gene symbols in `var` and perturbation labels in `obs` mapped as `data.recipes` does (names only)."""
    from biojepac.data.genes import get_symbols, harmonize_labels, harmonize_names

    table = get_symbols(table_fpath)
    old = [str(g) for g in var.index]
    new, gene_report = harmonize_names(old, table)
    var = var.assign(original_name=old).set_axis(pd.Index(new))
    if schema.PERT_COL not in obs.columns:
        return var, gene_report.to_uns(table.fpath), obs, {}
    cat = pd.Categorical(obs[schema.PERT_COL])  # map each distinct label once, not once per cell
    labels, label_report = harmonize_labels(list(cat.categories), table)
    obs = obs.assign(**{schema.PERT_COL: pd.Categorical(np.asarray(labels, dtype=object)[cat.codes])})
    return var, gene_report.to_uns(table.fpath), obs, label_report.to_uns(table.fpath)


class CsrWriter:
    """Appends CSR row chunks to resizable, chunked HDF5 datasets laid out as AnnData's `X`."""

    def __init__(self, f: h5py.File, n_genes: int, chunk_nnz: int):
        self.g = f.create_group("X")
        self.n_genes, self.nnz = n_genes, 0
        kw = dict(shape=(0,), maxshape=(None,), chunks=(chunk_nnz,))
        self.data = self.g.create_dataset("data", dtype=np.float32, **kw)
        self.indices = self.g.create_dataset("indices", dtype=np.int32, **kw)
        self.indptr = self.g.create_dataset("indptr", data=np.zeros(1, dtype=np.int64), maxshape=(None,), chunks=(1 << 16,))

    def append(self, m: sp.csr_matrix) -> None:
        m.sort_indices()
        n = m.nnz
        for ds, vals in ((self.data, m.data), (self.indices, m.indices)):
            ds.resize((self.nnz + n,))
            ds[self.nnz :] = vals
        n_ptr = len(self.indptr)
        self.indptr.resize((n_ptr + m.shape[0],))
        self.indptr[n_ptr:] = self.nnz + m.indptr[1:].astype(np.int64)
        self.nnz += n

    def close(self, n_rows: int) -> None:
        assert len(self.indptr) == n_rows + 1, "every row was appended once"
        self.g.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": np.array([n_rows, self.n_genes])})


@dataclasses.dataclass(frozen=True)
class PrepareOocCommand:
    screen: pathlib.Path = pathlib.Path("screen.h5ad")
    """Canonical screen (.h5ad, CSR or dense X; counts or log1p), read block by block, never loaded whole."""
    out: pathlib.Path = pathlib.Path("screen.prepared.h5ad")
    """Output: chunked CSR .h5ad (log1p, HVGs, `uns['pseudobulk']`), ready for `data.stream`."""
    ooc: OocConfig = OocConfig()
    """Processing settings."""


def run_prepare_ooc(cmd: PrepareOocCommand) -> None:
    summary = prepare_out_of_core(cmd.screen, cmd.out, cmd.ooc)
    print(f"{cmd.out}: {summary['n_cells']:,} cells x {summary['n_genes_out']:,} genes "
          f"(from {summary['n_genes_in']:,}; {summary['transform']['applied']})")
