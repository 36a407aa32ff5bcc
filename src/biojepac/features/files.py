"""Precomputed embedding files: `.pt` (e.g. VCC `ESM2_pert_features.pt`), `.npz`, `.parquet`, `.csv`.

Accepted layouts:
- `.pt`: a dict gene -> 1-D tensor/array (torch is an optional extra, imported only here).
- `.npz`: arrays `genes` (or `keys`) and `vectors` (or `embeddings`/`matrix`), or one 1-D array per gene.
- `.parquet` / `.csv`: one row per gene; the gene is the column named `gene`/`symbol`/`target_gene`,
  else the first column (csv) or the index (parquet); every other column must be numeric.
"""

import pathlib

import numpy as np
import pandas as pd

from biojepac.errors import InputError
from biojepac.features.base import GeneTable

TORCH_HINT = "pip install torch==2.13.0  (or: pip install 'biojepac[torch]')"
GENE_COLUMNS = ("gene", "symbol", "target_gene", "gene_symbol")


def load_embedding_file(fpath: pathlib.Path) -> GeneTable:
    fpath = pathlib.Path(fpath)
    if not fpath.is_file():
        raise InputError(f"embedding file not found: {fpath}")
    suffix = fpath.suffix.lower()
    if suffix in (".pt", ".pth"):
        keys, rows = _read_pt(fpath)
    elif suffix == ".npz":
        keys, rows = _read_npz(fpath)
    elif suffix in (".parquet", ".csv"):
        keys, rows = _read_table(fpath, suffix)
    else:
        raise InputError(f"{fpath}: unsupported embedding file type {suffix!r} (use .pt, .npz, .parquet or .csv)")
    if not np.all(np.isfinite(rows)):
        bad = [k for k, r in zip(keys, rows) if not np.all(np.isfinite(r))][:10]
        raise InputError(f"{fpath}: non-finite values in vectors for {bad}")
    return GeneTable(name=f"file:{fpath.name}", keys=tuple(map(str, keys)), matrix=rows, source=str(fpath))


def _stack(fpath, keys, vecs) -> tuple[list[str], np.ndarray]:
    dims = {np.asarray(v).reshape(-1).shape[0] for v in vecs}
    if len(dims) != 1:
        raise InputError(f"{fpath}: vectors have different lengths {sorted(dims)[:5]}")
    return list(keys), np.stack([np.asarray(v, np.float32).reshape(-1) for v in vecs])


def _read_pt(fpath):
    try:
        import torch
    except ImportError:
        raise InputError(f"{fpath}: reading .pt files needs torch, which is not installed; run: {TORCH_HINT}") from None
    obj = torch.load(fpath, map_location="cpu", weights_only=False)
    if not isinstance(obj, dict):
        raise InputError(f"{fpath}: expected a dict gene -> vector, found {type(obj).__name__}")
    vecs = [v.detach().float().numpy() if hasattr(v, "detach") else np.asarray(v) for v in obj.values()]
    return _stack(fpath, obj.keys(), vecs)


def _read_npz(fpath):
    try:
        return _read_npz_arrays(fpath)
    except ValueError as err:  # object arrays need pickle, which we never load from a user's file
        raise InputError(f"{fpath}: cannot read without pickle ({err}); save gene names as a str array") from None


def _read_npz_arrays(fpath):
    with np.load(fpath, allow_pickle=False) as npz:
        names = set(npz.files)
        key_name = next((k for k in ("genes", "keys") if k in names), None)
        mat_name = next((k for k in ("vectors", "embeddings", "matrix") if k in names), None)
        if key_name and mat_name:
            keys, mat = npz[key_name].astype(str).tolist(), npz[mat_name]
            if mat.ndim != 2 or mat.shape[0] != len(keys):
                raise InputError(f"{fpath}: {mat_name!r} shape {mat.shape} does not match {len(keys)} {key_name}")
            return keys, mat.astype(np.float32)
        return _stack(fpath, npz.files, [npz[k] for k in npz.files])


def _read_table(fpath, suffix):
    df = pd.read_parquet(fpath) if suffix == ".parquet" else pd.read_csv(fpath)
    col = next((c for c in df.columns if str(c).lower() in GENE_COLUMNS), None)
    if col is not None:
        df = df.set_index(col)
    elif suffix == ".csv":
        df = df.set_index(df.columns[0])
    bad = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        raise InputError(f"{fpath}: non-numeric embedding columns {bad[:5]}")
    return df.index.astype(str).tolist(), df.to_numpy(np.float32)
