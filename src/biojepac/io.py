"""Atomic output: every file the project writes appears whole or not at all.

A killed run leaves either the previous file or the new one, never a truncated one, because the data
goes to a temporary file in the same folder first and is then renamed into place (`os.replace` is
atomic within one filesystem).
"""

from __future__ import annotations

import os
import pathlib
from typing import Callable, TYPE_CHECKING

from biojepac.errors import InputError

if TYPE_CHECKING:
    import anndata as ad


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(fpath: str | os.PathLike) -> None:
    """Remove the hidden `.NAME.tmp<pid>...` siblings of `fpath` that a killed run left behind. The pid in
    the name says whose it is: a temporary of a process still running (a concurrent writer) is kept."""
    import glob
    import re
    import shutil

    fpath = pathlib.Path(fpath)
    if not fpath.parent.is_dir():
        return
    pattern = re.compile(re.escape(f".{fpath.name}.tmp") + r"(?:-old)?(\d+)")
    for stale in fpath.parent.glob(f".{glob.escape(fpath.name)}.tmp*"):
        m = pattern.match(stale.name)
        if m and (int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1)))):
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def temp_sibling(fpath: str | os.PathLike) -> pathlib.Path:
    """The hidden temporary name this process writes `fpath` under (suffix kept), after removing the
    ones killed runs left."""
    fpath = pathlib.Path(fpath)
    if fpath.is_dir():  # checked before the work: os.replace would fail only after it
        raise InputError(f"{fpath}: is a folder; give the file to write")
    fpath.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(fpath)
    return fpath.with_name(f".{fpath.name}.tmp{os.getpid()}{fpath.suffix}")


def atomic_write(fpath: str | os.PathLike, write: Callable[[pathlib.Path], object]) -> pathlib.Path:
    """Call `write(tmp_fpath)`, then move the result to `fpath`. The temporary name keeps the suffix,
    so writers that infer the format from it (matplotlib, `np.savez`) behave as for `fpath`."""
    fpath = pathlib.Path(fpath)
    tmp = temp_sibling(fpath)
    try:
        write(tmp)
        os.replace(tmp, fpath)
    finally:
        tmp.unlink(missing_ok=True)
    return fpath


def write_dir_atomic(dpath: str | os.PathLike, write: Callable[[pathlib.Path], object]) -> pathlib.Path:
    """Call `write(tmp_dpath)` on a fresh folder beside `dpath`, then rename it to `dpath`, replacing a
    previous folder of that name only once the new one is complete. A failed or killed write leaves
    the previous folder (and, when killed, a hidden `.NAME.tmp*` folder that the next write removes)."""
    import shutil
    import tempfile

    dpath = pathlib.Path(dpath)
    dpath.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dpath)  # left by a killed earlier write (a concurrent writer's is kept)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=dpath.parent, prefix=f".{dpath.name}.tmp{os.getpid()}-"))
    try:
        write(tmp)
        olds = []
        for _ in range(10):  # another writer may put its folder in place between our two renames: retry
            if dpath.exists():
                olds.append(pathlib.Path(tempfile.mkdtemp(dir=dpath.parent, prefix=f".{dpath.name}.tmp-old{os.getpid()}-")))
                try:
                    os.replace(dpath, olds[-1] / "x")
                except FileNotFoundError:  # the other writer moved it first
                    pass
            try:
                os.replace(tmp, dpath)
                break
            except OSError:  # dpath reappeared (another writer's, complete): move it away again
                continue
        else:
            raise OSError(f"{dpath}: could not move the new folder into place (other writers kept replacing it)")
        for old in olds:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dpath


def write_text_atomic(fpath: str | os.PathLike, text: str | bytes) -> pathlib.Path:
    if isinstance(text, bytes):
        return atomic_write(fpath, lambda tmp: tmp.write_bytes(text))
    return atomic_write(fpath, lambda tmp: tmp.write_text(text))


def write_h5ad_atomic(adata: ad.AnnData, fpath: str | os.PathLike, **kwargs) -> pathlib.Path:
    """`adata.write_h5ad`, atomically; `kwargs` go to it (e.g. `compression="gzip"`)."""
    return atomic_write(fpath, lambda tmp: adata.write_h5ad(tmp, **kwargs))


def command_line(prog: str, cfg) -> str:
    """An equivalent command line for a config, recorded in provenance so any output can be re-made
    (sys.argv is useless for that under the Python API or pytest)."""
    import dataclasses

    parts = [prog]
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, tuple):
            parts += [flag, *map(str, value)] if value else []
        elif value is not None:
            parts += [flag, str(value)]
    return " ".join(parts)


def write_xz_tsv(df, dst: str | os.PathLike) -> pathlib.Path:
    """A table as reproducible bytes (package data): tab-separated, LF line ends, no quoting, .xz with a
    fixed preset (the container has no timestamp), written atomically."""
    import csv
    import io
    import lzma

    buf = io.StringIO()
    df.to_csv(buf, sep="\t", index=False, quoting=csv.QUOTE_NONE, lineterminator="\n")
    return write_text_atomic(dst, lzma.compress(buf.getvalue().encode(), preset=9 | lzma.PRESET_EXTREME))
