"""`normalize_total` + `log1p` (counts vs log1p is decided by `data.values.detect_kind`), and highly variable genes.

Every function returns a new AnnData and records what it did in `uns["biojepac"]`; the caller's
AnnData is never modified (cell-eval normalises in place, which is how users lost track of what their
files held).
"""

import typing

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp

from biojepac.data import schema
from biojepac.data.values import Expect, detect_kind, target_sum
from biojepac.errors import InputError


def normalize_log1p(
    adata: ad.AnnData,
    target: typing.Literal["median"] | float = "median",
    *,
    expect: Expect = "auto",
) -> ad.AnnData:
    """Return a copy with X = log1p(normalize_total(counts)), raw counts kept in `layers["counts"]`.

    `target="median"` scales every cell to the median total count of the cells with any counts (scanpy's
    default), a float scales to that value (e.g. 1e4). The value used is recorded in
    `uns["biojepac"]["transform"]`. Input that is already log1p is copied unchanged, and that is recorded.
    """
    prov = dict(adata.uns.get(schema.UNS_KEY, {}))
    kind = expect if expect != "auto" else detect_kind(adata.X, prov.get("source", "screen"))
    out = adata.to_memory() if adata.isbacked else adata.copy()
    if kind == "log1p":
        prov["transform"] = {"input": "log1p", "applied": "none"}
        out.uns[schema.UNS_KEY] = prov
        return out

    totals = np.asarray(out.X.sum(axis=1)).ravel()
    total = target_sum(totals, target, prov.get("source", "screen"))
    out.layers["counts"] = out.X.copy()
    out.X = out.X.astype(np.float32) if sp.issparse(out.X) else np.asarray(out.X, dtype=np.float32)
    sc.pp.normalize_total(out, target_sum=total)
    sc.pp.log1p(out)
    prov["transform"] = {
        "input": "counts",
        "applied": "normalize_total+log1p",
        "target": str(target),
        "target_sum": total,
        "counts_layer": "counts",
    }
    out.uns[schema.UNS_KEY] = prov
    return out


def select_hvg(
    adata: ad.AnnData,
    n_top: int,
    flavor: typing.Literal["seurat", "cell_ranger", "seurat_v3"] = "seurat",
) -> ad.AnnData:
    """Return a copy restricted to the `n_top` highly variable genes (original gene order kept).

    `seurat`/`cell_ranger` read log1p X; `seurat_v3` reads `layers["counts"]` (and needs scikit-misc).
    """
    if n_top >= adata.n_vars:
        out = adata.to_memory() if adata.isbacked else adata.copy()
    else:
        work = adata.to_memory() if adata.isbacked else adata.copy()
        layer = "counts" if flavor == "seurat_v3" else None
        if layer is not None and layer not in work.layers:
            raise InputError("select_hvg(flavor='seurat_v3') needs raw counts in layers['counts']")
        hv = sc.pp.highly_variable_genes(work, n_top_genes=n_top, flavor=flavor, layer=layer, inplace=False)
        mask = np.asarray(hv["highly_variable"], dtype=bool)
        if mask.sum() > n_top:
            # scanpy keeps every gene tied at the cut-off (common in small or single-gene mean bins);
            # we promise exactly n_top, so break ties by score, then by gene position.
            score = hv["dispersions_norm"] if "dispersions_norm" in hv else -hv["highly_variable_rank"]
            score = np.where(mask, np.nan_to_num(np.asarray(score, dtype=float), nan=-np.inf), -np.inf)
            mask = np.zeros_like(mask)
            mask[np.argsort(-score, kind="stable")[:n_top]] = True
        out = work[:, mask].copy()
    prov = dict(out.uns.get(schema.UNS_KEY, {}))
    prov["hvg"] = {"n_top": int(n_top), "flavor": flavor, "n_selected": int(out.n_vars)}
    out.uns[schema.UNS_KEY] = prov
    return out

