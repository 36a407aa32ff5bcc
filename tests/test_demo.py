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


def test_demo_starts_runs_made_with_other_settings_afresh(tmp_path, capsys):
    from biojepac.demo import prepare_runs

    runs = tmp_path / "runs"
    prepare_runs(DemoConfig(out_dpath=tmp_path, seed=0))
    (runs / "state").mkdir()
    (runs / "state" / "ckpt.eqx").write_text("seed-0 run")
    prepare_runs(DemoConfig(out_dpath=tmp_path, seed=0))  # same settings: the runs are kept (and resumed)
    assert (runs / "state" / "ckpt.eqx").exists()
    prepare_runs(DemoConfig(out_dpath=tmp_path, seed=1))
    assert not (runs / "state").exists()
    assert "trained with other settings (seed 0 -> 1): starting those runs afresh" in capsys.readouterr().out
    assert json.loads((runs / "settings.json").read_text())["seed"] == 1
