"""Atomic output: whole files and folders or nothing, and no temporaries left by killed runs."""

import os
import pathlib
import subprocess
import sys
import threading

import pytest

from biojepac.io import remove_stale_temps, write_dir_atomic, write_text_atomic


def dead_pid() -> int:
    """The pid of a process that has exited (what a kill -9 leaves in a temporary's name)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporaries_of_killed_runs_are_removed_and_live_ones_kept(tmp_path: pathlib.Path):
    pid = dead_pid()
    (tmp_path / f".out.h5ad.tmp{pid}.h5ad").write_text("half a file")  # a killed file write
    (tmp_path / f".report.tmp{pid}-x1").mkdir()  # a killed folder write
    (tmp_path / f".report.tmp{pid}-x1" / "a.csv").write_text("half")
    (tmp_path / f".report.tmp-old{pid}-x2").mkdir()
    live = tmp_path / f".report.tmp{os.getppid()}-x3"  # a concurrent writer's, still running
    live.mkdir()
    (tmp_path / ".other.tmp1").write_text("not ours")
    write_text_atomic(tmp_path / "out.h5ad", "whole")
    write_dir_atomic(tmp_path / "report", lambda d: (d / "a.csv").write_text("whole"))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".other.tmp1", live.name, "out.h5ad", "report"], names
    remove_stale_temps(tmp_path / "missing-folder" / "x")  # no parent: nothing to do


def test_a_failed_folder_write_keeps_the_previous_folder_whole(tmp_path: pathlib.Path):
    write_dir_atomic(tmp_path / "out", lambda d: [(d / n).write_text("run 1") for n in ("a", "b")])

    def half(d: pathlib.Path):
        (d / "a").write_text("run 2")
        raise KeyboardInterrupt  # killed half way

    with pytest.raises(KeyboardInterrupt):
        write_dir_atomic(tmp_path / "out", half)
    assert {p.name: p.read_text() for p in (tmp_path / "out").iterdir()} == {"a": "run 1", "b": "run 1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_concurrent_folder_writes_never_mix(tmp_path: pathlib.Path):
    barrier = threading.Barrier(4)
    errors = []

    def run(i: int):
        def write(d: pathlib.Path):
            (d / "a").write_text(str(i))
            barrier.wait()  # all four writers hold a finished folder, then race to rename
            (d / "b").write_text(str(i))

        try:
            write_dir_atomic(tmp_path / "out", write)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    contents = {p.name: p.read_text() for p in (tmp_path / "out").iterdir()}
    assert set(contents) == {"a", "b"} and len(set(contents.values())) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


KILLED_BETWEEN_STEPS = r"""
import os, pathlib, sys
from biojepac import io

mode, dpath = sys.argv[1], pathlib.Path(sys.argv[2])
if mode == "two-renames":  # a system without an atomic exchange: killed after moving the old folder aside
    io._exchange = lambda a, b: False
    real_rename = os.rename

    def rename(src, dst):
        real_rename(src, dst)
        if pathlib.Path(dst).name == io.OLD_NAME:
            os._exit(137)

    io.os.rename = rename
else:  # killed right after the exchange, before the previous folder (now at the temporary name) is removed
    real_exchange = io._exchange

    def exchange(a, b):
        assert real_exchange(a, b), "this filesystem has no atomic exchange"
        os._exit(137)

    io._exchange = exchange
io.write_dir_atomic(dpath, lambda d: [(d / n).write_text("run 2") for n in ("a", "b")])
"""


@pytest.mark.parametrize("mode", ["exchange", "two-renames"])
def test_a_folder_write_killed_between_its_steps_loses_neither_output(tmp_path: pathlib.Path, mode):
    """kill -9 between the steps that swap the new folder in: the folder is one run's whole output (or, without
    an atomic exchange, briefly absent with the previous one kept aside); the next write, even a failing one,
    restores the previous output where needed and removes every leftover."""
    out = tmp_path / "out"
    write_dir_atomic(out, lambda d: [(d / n).write_text("run 1") for n in ("a", "b")])
    proc = subprocess.run([sys.executable, "-c", KILLED_BETWEEN_STEPS, mode, str(out)], capture_output=True, text=True)
    assert proc.returncode == 137, proc.stderr
    assert any(p.name.startswith(".out.tmp") for p in tmp_path.iterdir())  # the killed write's leftovers
    contents = lambda: {p.name: p.read_text() for p in out.iterdir()}  # noqa: E731
    if mode == "exchange":
        assert contents() == {"a": "run 2", "b": "run 2"}  # no moment without a whole folder
    else:
        assert not out.exists()  # the one gap without an exchange: the previous folder is kept aside

    def fails(d: pathlib.Path):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_dir_atomic(out, fails)
    assert contents() == ({"a": "run 2", "b": "run 2"} if mode == "exchange" else {"a": "run 1", "b": "run 1"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
