"""Cheap fingerprints of training data, recorded in a run's checkpoint header so that a rerun on other
data is refused instead of resumed (`train.loop.check_resume`).

A fingerprint is a small JSON dict: the shape, a hash of the gene names in order, a hash of the label
counts, and the sum of the values (one vectorised pass; any changed value almost surely changes it).
"""

import hashlib

import numpy as np
import scipy.sparse as sp

from biojepac.data import schema


def digest(values) -> str:
    """A short, stable hash of a sequence of strings (order matters)."""
    h = hashlib.sha1()
    for v in values:
        h.update(str(v).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def screen_fingerprint(adata) -> dict:
    """Shape, gene names (in order), label counts per canonical obs column and the value sum of a screen."""
    x = adata.X
    total = float(x.sum(dtype=np.float64)) if sp.issparse(x) else float(np.asarray(x).sum(dtype=np.float64))
    labels = {}
    for col in (schema.PERT_COL, schema.CONTEXT_COL, schema.BATCH_COL):
        if col in adata.obs:
            counts = adata.obs[col].astype(str).value_counts().sort_index()
            labels[col] = digest(f"{k}={n}" for k, n in counts.items())
    return {"n_cells": int(adata.n_obs), "n_genes": int(adata.n_vars), "genes": digest(adata.var_names),
            "labels": labels, "x_sum": round(total, 3)}


def shards_fingerprint(shards, gene_names) -> dict:
    """Shape, gene names and per-shard rows and stored entries of backed CSR shards (metadata only)."""
    return {"n_genes": len(gene_names), "genes": digest(gene_names),
            "shards": [{"rows": int(s.n_rows), "nnz": int(s._indptr[-1])} for s in shards]}


def file_digest(fpath) -> str | None:
    """A short hash of a small file's bytes (a saved model's model.json), None when it is absent."""
    import pathlib

    fpath = pathlib.Path(fpath)
    return hashlib.sha1(fpath.read_bytes()).hexdigest()[:16] if fpath.is_file() else None
