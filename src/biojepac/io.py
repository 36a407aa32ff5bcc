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
    the name says whose it is: a temporary of a process still running (a concurrent writer) is kept.

    One is restored instead of removed: when `fpath` is missing and a dead writer's `.NAME.tmp-old<pid>-*`
    holds the previous folder (a write killed between moving the old folder away and moving the new one in,
    possible only where the two cannot be exchanged in one step), that folder is moved back first."""
    import glob
    import re
    import shutil

    fpath = pathlib.Path(fpath)
    if not fpath.parent.is_dir():
        return
    pattern = re.compile(re.escape(f".{fpath.name}.tmp") + r"(?:-old)?(\d+)")
    stale = []
    for path in fpath.parent.glob(f".{glob.escape(fpath.name)}.tmp*"):
        m = pattern.match(path.name)
        if not (m and (int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))))):
            stale.append(path)
    for path in stale:
        kept = path / OLD_NAME
        if path.name.startswith(f".{fpath.name}.tmp-old") and kept.is_dir() and not fpath.exists():
            try:
                os.rename(kept, fpath)  # fails if another writer put its folder in place meanwhile: then just remove
            except OSError:
                pass
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


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


OLD_NAME = "previous"
"""Inside a hidden `.NAME.tmp-old<pid>-*` folder: the previous output, moved aside (see `write_dir_atomic`)."""


def write_dir_atomic(dpath: str | os.PathLike, write: Callable[[pathlib.Path], object]) -> pathlib.Path:
    """Call `write(tmp_dpath)` on a fresh folder beside `dpath`, then put it in place of `dpath`, replacing a
    previous folder of that name only once the new one is complete, so `dpath` is always one write's whole
    output: the previous one or the new one, never a mix, never neither.

    The swap is one atomic step where the system has it (Linux `renameat2(RENAME_EXCHANGE)`); elsewhere the
    old folder is moved into a hidden `.NAME.tmp-old<pid>-*` folder and the new one renamed in, and a kill
    between the two is repaired by the next write (`remove_stale_temps` moves the old folder back before
    cleaning up). A failed or killed write leaves the previous folder; its hidden temporaries are removed by
    the next write. Concurrent writers: the last to finish wins, whole."""
    import shutil
    import tempfile

    dpath = pathlib.Path(dpath)
    if dpath.exists() and not dpath.is_dir():  # checked before the work: a folder never replaces a file
        raise InputError(f"{dpath}: exists and is not a folder; give the folder to write")
    dpath.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dpath)  # left by a killed earlier write (a concurrent writer's is kept)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=dpath.parent, prefix=f".{dpath.name}.tmp{os.getpid()}-"))
    try:
        write(tmp)
        _swap_into_place(tmp, dpath)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after an exchange: the previous folder
    return dpath


def _swap_into_place(tmp: pathlib.Path, dpath: pathlib.Path) -> None:
    """Put the folder `tmp` at `dpath`; whatever was at `dpath` ends up at `tmp` (or is removed)."""
    import shutil
    import tempfile

    for _ in range(10):  # another writer may put its folder in place between our steps: retry
        try:
            os.rename(tmp, dpath)  # no folder there yet (or an empty one)
            return
        except OSError:
            if not dpath.exists():
                continue
        if _exchange(tmp, dpath):
            return
        # No atomic exchange here: move the old folder aside, then the new one in (a kill in between is
        # repaired by the next write, see `remove_stale_temps`).
        old = pathlib.Path(tempfile.mkdtemp(dir=dpath.parent, prefix=f".{dpath.name}.tmp-old{os.getpid()}-"))
        try:
            os.rename(dpath, old / OLD_NAME)
        except FileNotFoundError:  # another writer moved it first
            pass
        try:
            os.rename(tmp, dpath)
            return
        except OSError:  # dpath reappeared (another writer's, complete): try again
            continue
        finally:
            if dpath.exists() or not (old / OLD_NAME).exists():
                shutil.rmtree(old, ignore_errors=True)
            else:  # our rename failed with nothing in place: put the previous folder back
                os.rename(old / OLD_NAME, dpath)
                shutil.rmtree(old, ignore_errors=True)
    raise OSError(f"{dpath}: could not move the new folder into place (other writers kept replacing it)")


def _exchange(a: pathlib.Path, b: pathlib.Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where the system
    or filesystem cannot (then the caller falls back to two renames)."""
    import ctypes
    import errno
    import sys

    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


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
