"""The README demo, end to end on the tiny preset with the cheap models."""

import json

from biojepac.demo import DemoConfig, run_demo


def test_demo_writes_a_report_with_real_numbers(tmp_path):
    cfg = DemoConfig(out_dpath=tmp_path, screen_preset="tiny", models=("control-mean", "cell-mean", "linear"), n_boot=20)
    report = run_demo(cfg)
    text = report.read_text()
    for name in cfg.models:
        assert f"| {name} |" in text
        assert (tmp_path / "reports" / name / "report.md").exists()
        assert (tmp_path / "predictions" / f"{name}.h5ad").exists()
    rows = {r["model"]: r for r in json.loads((tmp_path / "summary.json").read_text())}
    # Control mean predicts no change: its shift is 0 and so its predicted delta has no signal at all.
    assert rows["control-mean"]["MAE"] > 0
    # The cell-mean model is (almost) the evaluation's own baseline, so it scores near 0. Not exactly 0:
    # cell-eval's baseline also averages in the control group's mean.
    assert 0.0 <= rows["cell-mean"]["vcc_score"] < 5.0
    assert (tmp_path / "split.json").exists()


def test_demo_run_folder_is_checked_before_any_work(tmp_path):
    """The demo's runs folder goes through the shared run-folder check first (`train.run_folder.open_run`):
    another seed over a trained run is refused before the screen is generated; --overwrite empties it."""
    import pytest

    from biojepac.errors import InputError
    from biojepac.train.run_folder import open_run

    runs = tmp_path / "runs"
    open_run(runs, "demo", {"seed": 0, "screen_preset": "demo", "model_preset": "tiny", "steps_scale": 1.0,
                            "features": "varm:network_features"})
    (runs / "state").mkdir()
    (runs / "state" / "ckpt.eqx").write_text("seed-0 run")
    with pytest.raises(InputError, match=r"runs: it was made with other settings \(seed: 0 there, 1 now\)"):
        run_demo(DemoConfig(out_dpath=tmp_path, seed=1))
    assert not (tmp_path / "screen_counts.h5ad").exists() and (runs / "state" / "ckpt.eqx").exists()
