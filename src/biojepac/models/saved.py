"""The one saved-model format: a folder with `model.json` plus the model's own files.

`model.json` always holds `kind` (which loader rebuilds it; see `registry.load`), `format_version`,
`config` (everything needed to rebuild the model's shape) and `genes` (the expression genes, in order,
that the model reads and writes). A kind may add fields of its own. The folder is written beside its
destination and renamed into place (`io.write_dir_atomic`), so a reader sees the old model or the new
one, never a mix.
"""

import json
import pathlib
from collections.abc import Callable, Sequence

from biojepac.errors import InputError
from biojepac.io import write_dir_atomic

FORMAT_VERSION = 2
"""Bumped when a field of `model.json` changes meaning."""
META_FNAME = "model.json"


def save_model_dir(dpath: pathlib.Path, kind: str, config: dict, genes: Sequence[str],
                   write_files: Callable[[pathlib.Path], dict | None]) -> pathlib.Path:
    """Write a model folder: `write_files(tmp_dpath)` writes the weights and may return extra
    `model.json` fields; then `model.json` is added and the folder renamed into place. An existing folder
    is replaced only if it is a saved model (a mistyped path must not delete someone's files)."""
    dpath = pathlib.Path(dpath)
    if dpath.is_dir() and any(dpath.iterdir()) and not (dpath / META_FNAME).is_file():
        raise InputError(f"{dpath}: exists and is not a saved model folder (no {META_FNAME}); give another folder")

    def write(tmp: pathlib.Path) -> None:
        extra = write_files(tmp) or {}
        meta = {"kind": kind, "format_version": FORMAT_VERSION, "config": config, "genes": list(map(str, genes)), **extra}
        (tmp / META_FNAME).write_text(json.dumps(meta, indent=1, default=str))

    return write_dir_atomic(dpath, write)


def read_meta(dpath: pathlib.Path) -> dict:
    """`model.json` of a saved model folder, checked for the fields every kind has."""
    fpath = pathlib.Path(dpath) / META_FNAME
    if not fpath.is_file():
        raise InputError(f"{dpath}: no {META_FNAME}; not a saved model folder")
    try:
        meta = json.loads(fpath.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{fpath}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{fpath}: expected a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{fpath}: format_version {meta.get('format_version')!r}, this biojepac reads "
                         f"{FORMAT_VERSION}; retrain or re-save the model with this version")
    for key in ("kind", "config", "genes"):
        if key not in meta:
            raise InputError(f"{fpath}: missing field {key!r}")
    if not isinstance(meta["config"], dict):
        raise InputError(f"{fpath}: field 'config' must be a JSON object, got {type(meta['config']).__name__}")
    if not isinstance(meta["genes"], list) or not all(isinstance(g, str) for g in meta["genes"]):
        raise InputError(f"{fpath}: field 'genes' must be a list of gene names")
    named_code = [key for key in CODE_FIELDS if key in meta]
    if named_code:  # never imported or called: say so rather than let a reader think it was honoured
        raise InputError(f"{fpath}: field {named_code[0]!r} is not part of the format; a model is rebuilt only "
                         f"by the loader of its kind ({meta['kind']!r}), never by code the folder names; remove it")
    return meta


CODE_FIELDS = ("loader", "entry_point", "callable", "module")
"""Fields other formats use to name code to import; refused, so no model folder appears to run code."""


def check_genes(model_genes: Sequence[str], screen_genes: Sequence[str], model_dpath, screen_name: str) -> None:
    """A saved model reads and writes exactly its `genes`, in order: refuse a screen whose genes differ,
    with the first differences and how to fix them."""
    model_genes, screen_genes = list(map(str, model_genes)), list(map(str, screen_genes))
    if model_genes == screen_genes:
        return
    where = f"{screen_name}: genes differ from the model's ({pathlib.Path(model_dpath) / META_FNAME} 'genes'"
    if sorted(model_genes) == sorted(screen_genes) and len(set(model_genes)) == len(model_genes):
        pos = [i for i, (a, b) in enumerate(zip(model_genes, screen_genes)) if a != b][:3]
        first = ", ".join(f"position {i}: {screen_genes[i]!r} here, {model_genes[i]!r} in the model" for i in pos)
        raise InputError(f"{where}): same genes in another order ({first}); "
                         "reorder the screen's var to the model's genes (adata[:, genes])")
    missing = [g for g in model_genes if g not in set(screen_genes)]
    extra = [g for g in screen_genes if g not in set(model_genes)]
    first = next((i for i, (a, b) in enumerate(zip(model_genes, screen_genes)) if a != b), min(len(model_genes), len(screen_genes)))
    raise InputError(f"{where}: {len(screen_genes)} vs {len(model_genes)}; first difference at position {first}; "
                     f"missing here e.g. {missing[:5]}, not in the model e.g. {extra[:5]}); "
                     "give the screen the model was trained on, or one with the same genes in the same order")
