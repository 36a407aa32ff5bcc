"""The CLI contract: --help everywhere, and bad input as one line naming the file, not a traceback."""

import os
import subprocess
import sys

import pytest

from biojepac import cli
from random_screen import build_random_screen


def leaf_commands(table=cli.COMMANDS, prefix=()):
    for name, entry in table.items():
        if isinstance(entry, dict):
            yield from leaf_commands(entry, prefix + (name,))
        elif entry:
            yield prefix + (name,)


@pytest.mark.parametrize("path", list(leaf_commands()), ids=" ".join)
def test_every_subcommand_has_help(path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([*path, "--help"])
    assert exc.value.code == 0
    assert "usage" in capsys.readouterr().out.lower()


def test_unknown_subcommand_is_one_line_error(capsys):
    assert cli.main(["no-such-command"]) == 2
    assert "unknown subcommand 'no-such-command'" in capsys.readouterr().err


def test_bad_input_is_one_line_naming_the_file(tmp_path):
    screen = build_random_screen()
    screen.obs = screen.obs.drop(columns=["context"])
    bad = tmp_path / "no_context.h5ad"
    screen.write_h5ad(bad)
    proc = subprocess.run(
        [sys.executable, "-m", "biojepac.cli", "predict", "--model", "cell-mean", "--screen", str(bad),
         "--context", "c1", "--perturbations", "G001", "--out", str(tmp_path / "p.h5ad")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(bad) in err[0] or bad.name in err[0]
    assert "context" in err[0]


def test_evaluate_process_starts_with_quiet_blas_threads_and_no_cycle_collector(tmp_path):
    """`biojepac evaluate` from the shell sets QUICK_ENV before numpy loads (a user's own setting stays) and
    turns the cycle collector off; a call from Python changes neither."""
    code = ("import gc, os, sys; from biojepac import cli; sys.argv = ['biojepac', 'evaluate', '--pred', 'nope.h5ad', "
            "'--real', 'nope.h5ad', '--out-dpath', 'o']; rc = cli.main(); "
            "print(rc, os.environ.get('OPENBLAS_THREAD_TIMEOUT'), gc.isenabled())")
    for preset, want in ((None, cli.QUICK_ENV["OPENBLAS_THREAD_TIMEOUT"]), ("9", "9")):
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
        if preset:
            env["OPENBLAS_THREAD_TIMEOUT"] = preset
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert proc.stdout.split() == ["2", want, "False"], proc.stdout + proc.stderr
        assert "nope.h5ad: file not found" in proc.stderr
    code = code.replace("rc = cli.main()", "rc = cli.main(sys.argv[1:])")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.stdout.split() == ["2", "None", "True"], proc.stdout + proc.stderr


def test_unknown_context_names_the_training_file(tmp_path, capsys):
    train = tmp_path / "train.h5ad"
    screen = build_random_screen()
    screen.uns["biojepac"] = {"source": "some generator"}  # the error must still name the file read
    screen.write_h5ad(train)
    code = cli.main(["predict", "--model", "cell-mean", "--screen", str(train), "--context", "nowhere",
                     "--perturbations", "G001", "--out", str(tmp_path / "p.h5ad")])
    err = capsys.readouterr().err
    assert code == 2 and f"{train}: no 'non-targeting' cells in context 'nowhere'" in err


def test_train_split_trains_on_the_split_training_part_only(tmp_path, capsys):
    """`train state --split S`: the model sees the split's training perturbations and the controls, not the
    held-out ones (its one-hot features cover only the former); a split of another screen is one line."""
    import json

    screen = build_random_screen(n_perts=8)
    train = tmp_path / "screen.h5ad"
    screen.write_h5ad(train)
    split = tmp_path / "split.json"
    assert cli.main(["data", "split", "--screen", str(train), "--out", str(split), "--kind", "unseen_perturbation"]) == 0
    content = json.loads(split.read_text())
    test = {p for _, p in content["test"]} | {p for _, p in content.get("val", [])}
    assert test
    run = tmp_path / "run"
    assert cli.main(["train", "state", "--screen", str(train), "--split", str(split), "--run-dpath", str(run),
                     "--preset", "tiny", "--steps-scale", "0.01", "--features", "onehot", "--no-progress"]) == 0
    meta = json.loads((run / "model" / "model.json").read_text())
    n_train = len({p for _, p in content["train"]})
    assert meta["features"]["n_keys"] == n_train < 8  # one-hot over the perturbations it trained on
    other = build_random_screen(n_perts=3, seed=5)
    other_fpath = tmp_path / "other.h5ad"
    other.write_h5ad(other_fpath)
    capsys.readouterr()
    assert cli.main(["train", "state", "--screen", str(other_fpath), "--split", str(split), "--run-dpath", str(tmp_path / "r2"),
                     "--preset", "tiny", "--steps-scale", "0.01", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "split.json" in err[0]
