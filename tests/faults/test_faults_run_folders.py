"""Run folders, by command: a rerun with the same settings and data resumes, one with another seed or other
data is refused in one line naming the folder and the setting, and `--overwrite` starts afresh.

Every command that trains into a folder goes through `train.run_folder.open_run`; each is run here for real
(tiny preset, one or two steps; BioJEPAC's first stage only), so these are the suite's slowest cases."""

import json
import pathlib

import pytest

from fault_harness import run_cli

LONG_S = 600
"""Time limit for a training case (a tiny model, but a minute on a loaded machine)."""
FAST = ("--preset", "tiny", "--steps-scale", "0.01", "--no-progress")
TRAIN = {
    "train state": ("train", "state", "--screen", "{screen}", "--features", "onehot"),
    "train biojepac": ("train", "biojepac", "--screen", "{screen}", "--features", "onehot", "--stage", "pretrain"),
    "train state-stream": ("train", "state-stream", "--shards", "{shard}", "--features", "onehot", "--set-size", "4"),
    "train stream-pretrain": ("train", "stream-pretrain", "--shards", "{shard}", "--block-rows", "16"),
}


def _snapshot(dpath: pathlib.Path) -> dict:
    return {str(p.relative_to(dpath)): p.read_bytes() for p in sorted(dpath.rglob("*")) if p.is_file()}


def _one_error(rc: int, err: str) -> str:
    lines = [ln for ln in err.splitlines() if ": error: " in ln]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _other_data(world: dict, key: str, dpath: pathlib.Path) -> str:
    """The same input with its values shifted (same genes, labels and shape): only the value fingerprint differs.
    A shard keeps fewer rows instead (a shard's fingerprint is its metadata)."""
    import anndata as ad

    adata = ad.read_h5ad(world[key])
    if key == "shard":
        adata = adata[: adata.n_obs - 7].copy()
    else:
        adata.X = adata.X.copy()
        adata.X.data = adata.X.data + 1
    fpath = dpath / f"other_{pathlib.Path(world[key]).name}"
    adata.write_h5ad(fpath)
    return str(fpath)


@pytest.mark.parametrize("command", list(TRAIN))
def test_rerun_resumes_same_settings_refuses_others_overwrite_starts_afresh(command, world, tmp_path):
    run = tmp_path / "run"
    argv = [a.format(**world) for a in TRAIN[command]] + [*FAST, "--run-dpath", str(run)]
    rc, _, err = run_cli(argv, timeout_s=LONG_S)
    assert rc == 0, err
    settings = json.loads((run / "run.json").read_text())
    assert settings["command"] == command and settings["seed"] == 0 and settings["preset"] == "tiny", settings
    assert "genes" in json.dumps(settings["data"]), settings  # the input's fingerprint is recorded
    first = _snapshot(run)
    assert any(name.endswith("ckpt.eqx") for name in first), sorted(first)

    # The same settings: resumed (already at its last step: no step is trained, checkpoints and log unchanged).
    rc, _, err = run_cli(argv, timeout_s=LONG_S)
    assert rc == 0, err
    again = _snapshot(run)
    for name, data in first.items():
        if name.endswith(("ckpt.eqx", "metrics.jsonl", "run.json")):
            assert again[name] == data, f"{name} changed on a rerun with the same settings"

    # Another seed, or other data: refused before any work, in one line naming the folder and what differs.
    line = _one_error(*run_cli([*argv, "--seed", "1"], timeout_s=LONG_S)[::2])
    assert str(run) in line and "seed: 0 there, 1 now" in line and "--overwrite" in line, line
    key = "shard" if "--shards" in argv else "screen"
    other = [_other_data(world, key, tmp_path) if a == world[key] else a for a in argv]
    line = _one_error(*run_cli(other, timeout_s=LONG_S)[::2])
    assert str(run) in line and "data." in line, line
    assert _snapshot(run) == again  # refusals leave the folder as it was

    # --overwrite: the folder is emptied and the run starts afresh with the new settings.
    rc, _, err = run_cli([*argv, "--seed", "1", "--overwrite"], timeout_s=LONG_S)
    assert rc == 0, err
    assert json.loads((run / "run.json").read_text())["seed"] == 1
    fresh = _snapshot(run)
    assert all(fresh[n] != first[n] for n in first if n.endswith("ckpt.eqx")), "a checkpoint survived --overwrite"


@pytest.mark.fault_command("demo")
def test_demo_resumes_same_settings_refuses_others_overwrite_starts_afresh(tmp_path):
    """The demo's runs (OUT/runs): a checkpoint left by a trained model is kept for the same settings, refused
    for another seed, removed by --overwrite. (The demo's cheapest model trains nothing, so the checkpoint a
    trained model would leave is put in place by hand; resuming one is the trainers' test above.)"""
    out = tmp_path / "demo"
    argv = ["demo", "--out-dpath", str(out), "--screen-preset", "tiny", "--models", "control-mean", "--n-boot", "10"]
    rc, _, err = run_cli(argv, timeout_s=LONG_S)
    assert rc == 0, err
    ckpt = out / "runs" / "state" / "ckpt.eqx"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"a seed-0 state run")
    rc, _, err = run_cli(argv, timeout_s=LONG_S)
    assert rc == 0 and ckpt.exists(), err
    line = _one_error(*run_cli([*argv, "--seed", "1"], timeout_s=LONG_S)[::2])
    assert str(out / "runs") in line and "seed: 0 there, 1 now" in line and "--overwrite" in line, line
    assert ckpt.exists()
    rc, _, err = run_cli([*argv, "--seed", "1", "--overwrite"], timeout_s=LONG_S)
    assert rc == 0, err
    assert not ckpt.exists() and json.loads((out / "runs" / "run.json").read_text())["seed"] == 1
