"""Read a user's `.h5ad` screen, map its columns onto the canonical schema, and validate it once.

Everything downstream trusts the result: `obs` carries `schema.PERT_COL`, `CONTEXT_COL`, `BATCH_COL`,
`PERT_TYPE_COL` (and `GUIDE_COL` when the source has guides), controls are labelled `schema.CONTROL`,
gene names are unique and non-empty, values are finite and non-negative, and every perturbation
and every context has cells (every context has controls). Each failure raises `InputError` naming the
file and the column, gene or value at fault.

The source file is never written: it is read into memory, or opened read-only in backed mode.
"""

import dataclasses
import pathlib

import anndata as ad
import numpy as np
import pandas as pd

from biojepac.data import schema
from biojepac.data.normalize import normalize_log1p
from biojepac.data.values import Expect, Kind, classify, scan_values
from biojepac.errors import InputError

CONTROL_ALIASES = ("control", "ctrl")
"""Other control spellings some datasets use; accepted only when listed in `ScreenColumns.control_labels`."""


@dataclasses.dataclass(frozen=True)
class ScreenColumns:
    """Where the canonical fields live in a source file's `obs` / `var`."""

    pert: str = schema.PERT_COL
    """obs column with the perturbation label (combinations written `A+B`)."""
    context: str | None = None
    """obs column with the cell line / cell type; None: the file's `context` column, else `default_context`."""
    batch: str | None = None
    """obs column with the batch / gem group; None: the file's `batch` column, else `schema.DEFAULT_BATCH`."""
    guide: str | None = None
    """obs column with the guide identifier; None: the screen has no guide column."""
    pert_type: str = "CRISPRi"
    """An obs column holding the modality per cell, or one of `schema.PERT_TYPES` applied to every cell."""
    control_labels: tuple[str, ...] = (schema.CONTROL,)
    """Labels meaning 'control'; add `CONTROL_ALIASES` to accept `control`/`ctrl`. Relabelled `non-targeting`."""
    default_context: str = schema.DEFAULT_CONTEXT
    """Context given to every cell when `context` is None (e.g. the cell line's name)."""
    gene_symbol: str | None = None
    """var column holding gene symbols to use as the gene index; None: the var index already is."""


def load_screen(
    fpath: str | pathlib.Path,
    columns: ScreenColumns = ScreenColumns(),
    *,
    backed: bool = False,
    expect: Expect = "auto",
) -> ad.AnnData:
    """Read `fpath`, map it onto the canonical schema and validate it.

    `backed=True` opens the file read-only and leaves X on disk; the value checks then stream over
    row blocks, so a file larger than memory can be validated. `expect` overrides the counts/log1p
    detection (see `biojepac.data.values.classify`).
    """
    fpath = pathlib.Path(fpath)
    adata = read_h5ad(fpath, backed=backed)
    if not backed and adata.X is not None and adata.X.dtype == np.float16:
        adata.X = adata.X.astype(np.float32)  # exact; half precision is for storage, not arithmetic
    adata.obs = canonical_obs(adata.obs, columns, str(fpath))
    if columns.gene_symbol is not None:
        adata.var = _symbol_var(adata.var, columns.gene_symbol, str(fpath))
    kind = validate_screen(adata, str(fpath), expect=expect)
    adata.uns[schema.UNS_KEY] = {
        "source": str(fpath),
        "columns": {k: _h5ad_safe(v) for k, v in dataclasses.asdict(columns).items() if v is not None},
        "values": kind,
        "values_rule": "expected by user" if expect != "auto" else "detected",
    }
    return adata


def check_input_file(fpath: str | pathlib.Path) -> pathlib.Path:
    """A user's input file exists, is a file and is not empty; else an `InputError` naming it."""
    fpath = pathlib.Path(fpath)
    if not fpath.exists():
        raise InputError(f"{fpath}: file not found")
    if not fpath.is_file():
        raise InputError(f"{fpath}: is a folder, not a file")
    if fpath.stat().st_size == 0:
        raise InputError(f"{fpath}: file is empty (0 bytes)")
    return fpath


def read_h5ad(fpath: str | pathlib.Path, *, backed: bool = False) -> ad.AnnData:
    """The one reader of a user's `.h5ad` (read-only; `backed` leaves X on disk): a missing, empty,
    truncated or non-h5ad file is an `InputError` naming it."""
    fpath = check_input_file(fpath)
    try:
        return ad.read_h5ad(fpath, backed="r" if backed else None)
    except Exception as err:  # h5py/anndata raise many types for a damaged or non-h5ad file
        raise InputError(f"{fpath}: not a readable .h5ad file ({type(err).__name__}: {err})") from err


def open_h5(fpath: str | pathlib.Path):
    """A user's `.h5ad` as an open, read-only `h5py.File` (for readers that stream it), checked as `read_h5ad`
    checks it, and holding the AnnData groups X, obs and var."""
    import h5py

    fpath = check_input_file(fpath)
    try:
        f = h5py.File(fpath, "r")
    except OSError as err:
        raise InputError(f"{fpath}: not a readable .h5ad file ({err})") from None
    missing = [k for k in ("X", "obs", "var") if k not in f]
    if missing:
        f.close()
        raise InputError(f"{fpath}: not an AnnData .h5ad file (no {missing[0]!r} group)")
    return f


def read_screen_obs(fpath: str | pathlib.Path, columns: ScreenColumns = ScreenColumns()) -> ad.AnnData:
    """A screen for commands that read only its cells' labels (splits): opened backed, obs mapped onto the
    canonical schema and checked as `load_screen` checks it (genes and cells, not the values)."""
    adata = read_h5ad(fpath, backed=True)
    adata.obs = canonical_obs(adata.obs, columns, str(fpath))
    validate_labels(adata.obs, adata.var_names, str(fpath))
    return adata


def read_training_screen(fpath: str | pathlib.Path) -> ad.AnnData:
    """The one reader of a training screen, for every command that fits or applies a model: `load_screen`
    (canonical schema, validated), then raw counts normalised to log1p (median target; recorded in
    `uns["biojepac"]["transform"]`). The file is never written."""
    adata = load_screen(fpath)
    return normalize_log1p(adata) if adata.uns[schema.UNS_KEY]["values"] == "counts" else adata


def canonical_obs(obs: pd.DataFrame, columns: ScreenColumns, source: str) -> pd.DataFrame:
    """A copy of `obs` with the canonical columns added (other columns are kept; canonical names win)."""
    for role in ("pert", "context", "batch", "guide"):
        col = getattr(columns, role)
        if col is not None and col not in obs.columns:
            raise InputError(f"{source}: obs column {col!r} (the {role} column) not found; obs has {list(obs.columns)}")
    pert_type_is_col = columns.pert_type not in schema.PERT_TYPES
    if pert_type_is_col and columns.pert_type not in obs.columns:
        raise InputError(
            f"{source}: obs column {columns.pert_type!r} (the pert_type column) not found, and it is not one of "
            f"{schema.PERT_TYPES}; obs has {list(obs.columns)}"
        )

    src = obs[columns.pert]
    if isinstance(src.dtype, pd.CategoricalDtype):
        unused = sorted(set(src.cat.categories.astype(str)) - set(src.astype(str).unique()))
        if unused:
            raise InputError(f"{source}: perturbation {unused[0]!r} in obs column {columns.pert!r} has zero cells ({len(unused)} such)")
    out = obs.copy()
    out[schema.PERT_COL] = _canonical_labels(src, columns.control_labels, columns.pert, source)
    # A file that already has the canonical column keeps it unless another column is named.
    context_col = columns.context or (schema.CONTEXT_COL if schema.CONTEXT_COL in obs.columns else None)
    batch_col = columns.batch or (schema.BATCH_COL if schema.BATCH_COL in obs.columns else None)
    out[schema.CONTEXT_COL] = _str_column(obs, context_col, columns.default_context, source)
    out[schema.BATCH_COL] = _str_column(obs, batch_col, schema.DEFAULT_BATCH, source)
    if columns.guide is not None:
        out[schema.GUIDE_COL] = _str_column(obs, columns.guide, "", source)
    if pert_type_is_col:
        out[schema.PERT_TYPE_COL] = _str_column(obs, columns.pert_type, "", source)
        bad = sorted(set(out[schema.PERT_TYPE_COL].unique()) - set(schema.PERT_TYPES))
        if bad:
            raise InputError(f"{source}: value {bad[0]!r} in obs column {columns.pert_type!r} is not one of {schema.PERT_TYPES}")
    else:
        out[schema.PERT_TYPE_COL] = pd.Categorical([columns.pert_type] * len(obs))
    return out


def _canonical_labels(src: pd.Series, control_labels: tuple[str, ...], col: str, source: str) -> pd.Categorical:
    """Map labels through their unique values: strip, drop control parts of combos (`A+ctrl` -> `A`)."""
    if src.isna().any():
        raise InputError(f"{source}: obs column {col!r} is empty (NaN) for cell {src.index[src.isna().argmax()]!r}")
    controls = set(control_labels)
    mapping = {}
    for label in pd.unique(src.astype(str)):
        parts = [p.strip() for p in str(label).split(schema.COMBO_SEP)]
        if any(not p for p in parts):
            raise InputError(f"{source}: obs column {col!r} has an empty perturbation label {label!r}")
        genes = [p for p in parts if p not in controls]
        mapping[label] = schema.COMBO_SEP.join(genes) if genes else schema.CONTROL
    return pd.Categorical(src.astype(str).map(mapping))


def _str_column(obs: pd.DataFrame, col: str | None, default: str, source: str) -> pd.Categorical:
    if col is None:
        return pd.Categorical([default] * len(obs))
    values = obs[col]
    if values.isna().any():
        raise InputError(f"{source}: obs column {col!r} is empty (NaN) for cell {values.index[values.isna().argmax()]!r}")
    return pd.Categorical(values.astype(str))


def _symbol_var(var: pd.DataFrame, col: str, source: str) -> pd.DataFrame:
    if col not in var.columns:
        raise InputError(f"{source}: var column {col!r} (the gene symbol column) not found; var has {list(var.columns)}")
    out = var.copy()
    out["source_var_name"] = var.index.astype(str)
    out.index = pd.Index(var[col].astype(str).where(var[col].notna(), ""), name=None)
    return out


def _h5ad_safe(v):
    return list(v) if isinstance(v, tuple) else v


def validate_screen(adata: ad.AnnData, source: str, *, expect: Expect = "auto") -> Kind:
    """Check a canonical screen; raise `InputError` naming `source` and the column/gene/value at fault.

    Returns whether X holds counts or log1p values (detected, or `expect` when given).
    """
    validate_labels(adata.obs, adata.var_names, source)
    return _check_values(adata, source, expect)


def validate_labels(obs: pd.DataFrame, var_names, source: str) -> None:
    """The checks of `validate_screen` that need no pass over X: canonical obs columns, cells (some, with
    unique names, every context with controls) and genes (some, unique, non-empty names); for readers that
    scan X their own way (`data.combine`, `data.ooc`) or read only obs (`read_screen_obs`)."""
    for col in (schema.PERT_COL, schema.CONTEXT_COL, schema.BATCH_COL, schema.PERT_TYPE_COL):
        if col not in obs.columns:
            raise InputError(f"{source}: obs column {col!r} not found; obs has {list(obs.columns)}")
    if len(obs) == 0:
        raise InputError(f"{source}: no cells (obs is empty)")
    if len(var_names) == 0:
        raise InputError(f"{source}: no genes (var is empty)")
    schema.check_gene_names(var_names, source)
    dup = obs.index[obs.index.duplicated()].unique()
    if len(dup):
        raise InputError(f"{source}: duplicate cell name(s) {list(map(str, dup[:5]))} in obs ({len(dup)} in all); "
                         "make them unique (adata.obs_names_make_unique())")
    _check_cells(obs, source)


def _check_cells(obs: pd.DataFrame, source: str) -> None:
    pert = obs[schema.PERT_COL]
    if isinstance(pert.dtype, pd.CategoricalDtype):
        counts = pert.value_counts()
        empty = counts.index[counts == 0]
        if len(empty):
            raise InputError(f"{source}: perturbation {str(empty[0])!r} in obs column {schema.PERT_COL!r} has zero cells")
    is_ctrl = (pert.astype(str) == schema.CONTROL).to_numpy()
    if not is_ctrl.any():
        raise InputError(f"{source}: no control cells ({schema.CONTROL!r}) in obs column {schema.PERT_COL!r}")
    ctx = obs[schema.CONTEXT_COL].astype(str)
    with_ctrl = set(ctx[is_ctrl].unique())
    missing = [c for c in pd.unique(ctx) if c not in with_ctrl]
    if missing:
        raise InputError(f"{source}: context {missing[0]!r} (obs column {schema.CONTEXT_COL!r}) has no control cells")


def _check_values(adata: ad.AnnData, source: str, expect: Expect) -> Kind:
    if adata.X is None:
        raise InputError(f"{source}: X is empty (None)")
    scan = scan_values(adata.X)

    def where(bad) -> str:
        return f"value {bad.value!r} at cell {adata.obs_names[bad.row]!r}, gene {adata.var_names[bad.col]!r}"

    if scan.nonfinite is not None:
        raise InputError(f"{source}: X has a NaN/inf {where(scan.nonfinite)}")
    if scan.negative is not None:
        raise InputError(f"{source}: X has a negative {where(scan.negative)}")
    if expect == "counts":
        if scan.fraction is not None:
            raise InputError(f"{source}: counts expected but X has a non-integer {where(scan.fraction)}")
        return "counts"
    if expect == "log1p":
        return "log1p"
    return classify(scan.max, scan.fraction is None, source, "" if scan.fraction is None else where(scan.fraction),
                    hint="pass expect='log1p' or 'counts' if you know better")


def check_same_genes(a: ad.AnnData, b: ad.AnnData, a_name: str, b_name: str) -> None:
    """Raise `InputError` unless `a` and `b` have the same genes in the same order, naming the first differences."""
    ga, gb = pd.Index(a.var_names).astype(str), pd.Index(b.var_names).astype(str)
    if ga.equals(gb):
        return
    only_a, only_b = ga.difference(gb, sort=False), gb.difference(ga, sort=False)
    if len(only_a) or len(only_b):
        raise InputError(
            f"genes differ between {a_name} ({len(ga)} genes) and {b_name} ({len(gb)} genes): "
            f"only in {a_name}: {list(only_a[:5])} ({len(only_a)} in all); only in {b_name}: {list(only_b[:5])} ({len(only_b)} in all)"
        )
    if len(ga) != len(gb):
        raise InputError(f"genes differ between {a_name} and {b_name}: same names but {len(ga)} vs {len(gb)} entries (duplicates)")
    pos = int(np.flatnonzero(ga.to_numpy() != gb.to_numpy())[0])
    raise InputError(f"gene order differs between {a_name} and {b_name}: position {pos} is {ga[pos]!r} in {a_name} but {gb[pos]!r} in {b_name}")
