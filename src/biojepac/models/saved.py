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
    `model.json` fields; then `model.json` is added and the folder renamed into place."""

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
    return meta
