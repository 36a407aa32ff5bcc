"""Killed runs, reruns and concurrent runs: outputs whole or absent, leftovers removed by the next run,
(run folders: test_faults_run_folders.py). The kill -9 and concurrent cases run real processes."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from fault_harness import run_cli

EVALUATE = ["evaluate", "--profile", "vcc", "--no-plots"]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _spawn(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "biojepac.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _kill_when(proc: subprocess.Popen, seen, timeout_s: float = 120.0) -> bool:
    """kill -9 `proc` as soon as `seen()` is true (polled every 5 ms); True if it was killed mid-run."""
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < timeout_s:
        if seen():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return False


def _hidden(dpath: pathlib.Path) -> list[str]:
    return sorted(p.name for p in dpath.iterdir() if p.name.startswith(".") and ".tmp" in p.name)


def _evaluation_complete(out: pathlib.Path) -> None:
    names = sorted(p.name for p in out.iterdir())
    assert "per_perturbation.csv" in names and "aggregates.json" in names, names
    json.loads((out / "aggregates.json").read_text())


@pytest.mark.parametrize("command", ["predict", "submit", "data synth", "data prepare-ooc", "data split", "evaluate"])
def test_leftovers_of_a_killed_run_are_removed_by_the_next(command, world, tmp_path):
    """A hidden temporary named with a dead process's pid (what kill -9 leaves) is gone after the next run."""
    pid = _dead_pid()
    argv, out = {
        "predict": (["predict", "--model", "cell-mean", "--screen", world["screen"], "--context", "c1", "--requests",
                     world["requests"], "--out", str(tmp_path / "p.h5ad")], tmp_path / "p.h5ad"),
        "submit": (["submit", "--pred", world["pred"], "--genes", world["genes"], "--out", str(tmp_path / "p.vcc"),
                    "--expected-gene-dim", "-1"], tmp_path / "p.vcc"),
        "data synth": (["data", "synth", "--screen-preset", "tiny", "--out", str(tmp_path / "s.h5ad")], tmp_path / "s.h5ad"),
        "data prepare-ooc": (["data", "prepare-ooc", "--screen", world["screen"], "--out", str(tmp_path / "o.h5ad")],
                             tmp_path / "o.h5ad"),
        "data split": (["data", "split", "--screen", world["screen"], "--out", str(tmp_path / "s.json")], tmp_path / "s.json"),
        "evaluate": ([*EVALUATE, "--pred", world["pred"], "--real", world["real"], "--n-boot", "10", "--out-dpath",
                      str(tmp_path / "ev")], tmp_path / "ev"),
    }[command]
    stale_file = tmp_path / f".{out.name}.tmp{pid}{out.suffix}"
    stale_file.write_bytes(b"half a file")
    stale_dir = tmp_path / f".{out.name}.tmp{pid}-x1y2"
    stale_dir.mkdir()
    (stale_dir / "part").write_text("x")
    rc, _, err = run_cli(argv)
    assert rc == 0, err
    assert out.exists()
    assert _hidden(tmp_path) == [], _hidden(tmp_path)


@pytest.mark.fault_command("evaluate")
def test_evaluate_killed_mid_write_leaves_the_previous_output_then_rerun_completes(world, tmp_path):
    out = tmp_path / "ev"
    base = [*EVALUATE, "--pred", world["pred"], "--real", world["real"], "--out-dpath", str(out)]
    assert run_cli([*base, "--n-boot", "10"])[0] == 0
    proc = _spawn([*base, "--n-boot", "20"])
    _kill_when(proc, lambda: bool(_hidden(tmp_path)))
    # Killed at any point, the folder is one run's whole output (the previous one, or the new one once swapped
    # into place), never a mix, never neither. (Where the system cannot exchange two folders in one step, a kill
    # between its two renames leaves the previous folder hidden aside, and the next run moves it back.)
    assert out.exists() or any(".ev.tmp-old" in name for name in _hidden(tmp_path)), _hidden(tmp_path)
    if out.exists():
        _evaluation_complete(out)
    rc, _, err = run_cli([*base, "--n-boot", "10"])
    assert rc == 0, err
    _evaluation_complete(out)
    assert _hidden(tmp_path) == []


@pytest.mark.fault_command("data synth")
def test_synth_killed_mid_write_then_rerun_leaves_one_whole_file(tmp_path):
    out = tmp_path / "s.h5ad"
    proc = _spawn(["data", "synth", "--screen-preset", "demo", "--out", str(out)])
    _kill_when(proc, lambda: bool(_hidden(tmp_path)))
    assert not out.exists() or out.stat().st_size > 0
    rc, _, err = run_cli(["data", "synth", "--screen-preset", "tiny", "--out", str(out)])
    assert rc == 0, err
    assert _hidden(tmp_path) == []
    import anndata as ad

    assert ad.read_h5ad(out).n_obs > 0


@pytest.mark.fault_command("evaluate")
def test_two_evaluations_into_one_folder_at_once(world, tmp_path):
    out = tmp_path / "ev"
    base = [*EVALUATE, "--pred", world["pred"], "--real", world["real"], "--out-dpath", str(out)]
    procs = [_spawn([*base, "--n-boot", n]) for n in ("10", "12")]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    _evaluation_complete(out)
    assert _hidden(tmp_path) == []


@pytest.mark.fault_command("predict")
def test_two_predictions_into_one_file_at_once(world, tmp_path):
    out = tmp_path / "p.h5ad"
    argv = ["predict", "--model", "cell-mean", "--screen", world["screen"], "--context", "c1", "--requests", world["requests"],
            "--out", str(out)]
    procs = [_spawn([*argv, "--seed", s]) for s in ("0", "1")]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    import anndata as ad

    assert ad.read_h5ad(out).n_obs > 0
    assert _hidden(tmp_path) == []


@pytest.mark.fault_command("bench")
def test_bench_leaderboard_names_the_database_it_read(tmp_path):
    from biojepac import results_db

    db = tmp_path / "mine.sqlite"
    results_db.connect(db).close()
    rc, _, err = run_cli(["bench", "--leaderboard-only", "--db", str(db), "--out-dpath", str(tmp_path / "lb")])
    assert rc == 0, err
    text = (tmp_path / "lb" / "leaderboard.md").read_text()
    assert "mine.sqlite" in text and "benchmarks/results/bench.sqlite" not in text


@pytest.mark.fault_command("bench")
def test_bench_exits_nonzero_when_every_run_failed(tmp_path, monkeypatch):
    """Every (model, task) run failing is an error (exit 2, one line), not a green bench; the runs are still recorded."""
    import types

    from biojepac import results_db
    from biojepac.bench import grid, tasks

    task = types.SimpleNamespace(name="synthetic-unseen-pert", split=types.SimpleNamespace(name="s"), checksum="c")
    monkeypatch.setattr(tasks, "get_task", lambda *a, **k: task)
    monkeypatch.setattr(grid, "predict", lambda cfg, task, model: {
        "model": model, "task": task.name, "split_name": "s", "split_json": {}, "dataset_checksum": "c", "git_commit": "x",
        "command": "biojepac bench", "host": "h", "model_config": {}, "status": "failed", "note": "exit 1: boom"})
    db = tmp_path / "b.sqlite"
    rc, _, err = run_cli(["bench", "--db", str(db), "--out-dpath", str(tmp_path / "lb"), "--cache-dpath", str(tmp_path / "c"),
                          "--models", "cell-mean", "linear", "--tasks", "synthetic-unseen-pert"])
    lines = [ln for ln in err.splitlines() if ": error: " in ln]
    assert rc == 2 and len(lines) == 1 and "every run failed" in lines[0] and "boom" in lines[0], err
    assert len(results_db.latest_runs(results_db.connect(db))) == 2
