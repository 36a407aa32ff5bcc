"""The canonical screen: the column names and labels every other module may rely on.

A screen is an AnnData whose `obs` has been mapped onto these columns by `biojepac.data.load`.
Column names follow the Virtual Cell Challenge / cell-eval conventions so that our files can be
scored by cell-eval unchanged.
"""

PERT_COL = "target_gene"
"""Perturbation label per cell. Combinations are written `A+B`; controls carry `CONTROL`."""
CONTEXT_COL = "context"
"""Cell line or cell type. `DEFAULT_CONTEXT` when the source has none."""
BATCH_COL = "batch"
"""Batch / gem group. `DEFAULT_BATCH` when the source has none."""
GUIDE_COL = "guide_id"
"""Guide identifier, when the source has one."""
PERT_TYPE_COL = "pert_type"
"""Perturbation modality, one of `PERT_TYPES` (controls carry the screen's modality too)."""

CONTROL = "non-targeting"
DEFAULT_CONTEXT = "default"
DEFAULT_BATCH = "0"
COMBO_SEP = "+"
PERT_TYPES = ("CRISPRi", "CRISPRa", "KO", "overexpression", "drug")

UNS_KEY = "biojepac"
"""`adata.uns[UNS_KEY]` records provenance: source file, column mapping, transforms, gene mapping."""


def split_combo(label: str) -> list[str]:
    """`"A+B"` -> `["A", "B"]`; a single perturbation -> `[label]`."""
    return [part for part in label.split(COMBO_SEP) if part]


def source_name(adata) -> str:
    """The file behind an AnnData, for error messages: the backed file, else the file it was read from
    (`uns[UNS_KEY]["file"]`, set by readers), else the source recorded at load."""
    prov = adata.uns.get(UNS_KEY, {})
    fname = adata.filename if adata.isbacked else prov.get("file", prov.get("source"))
    return str(fname) if fname else "<AnnData>"


def check_gene_names(names, source: str) -> None:
    """Gene names are unique and non-empty; else an `InputError` naming `source` (the file) and the genes.
    NumPy only, so fast readers (`eval.inputs`) use it without importing anndata."""
    import numpy as np

    from biojepac.errors import InputError

    names = np.asarray(names).astype(str)
    empty = np.flatnonzero((np.char.strip(names) == "") | (names == "nan") | (names == "None"))
    if empty.size:
        raise InputError(f"{source}: empty gene name at var position(s) {empty[:5].tolist()} ({empty.size} in all)")
    uniq, first, counts = np.unique(names, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][np.argsort(first[counts > 1])]
        raise InputError(f"{source}: duplicate gene name(s) {list(map(str, dup[:5]))} ({dup.size} in all)")
