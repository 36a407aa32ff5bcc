"""The one run-folder check (`train.run_folder.open_run`) every training command calls before any work."""

import json

import pytest

from biojepac.errors import InputError
from biojepac.train.run_folder import open_run

SETTINGS = {"preset": "tiny", "seed": 0, "data": {"genes": "abc", "x_sum": 1.5}}


def test_same_settings_resume_other_settings_are_refused_naming_each(tmp_path):
    run = tmp_path / "run"
    assert not open_run(run, "train x", SETTINGS)
    (run / "ckpt.eqx").write_bytes(b"weights")
    assert open_run(run, "train x", SETTINGS)  # resuming
    other = {**SETTINGS, "seed": 1, "data": {"genes": "abc", "x_sum": 2.5}}
    with pytest.raises(InputError) as err:
        open_run(run, "train x", other)
    assert str(err.value).startswith(f"{run}: it was made with other settings (seed: 0 there, 1 now; data.x_sum: 1.5 there, 2.5 now)")
    assert "--overwrite" in str(err.value)
    with pytest.raises(InputError, match="command: \"train x\" there, \"train y\" now"):
        open_run(run, "train y", SETTINGS)
    assert json.loads((run / "run.json").read_text())["seed"] == 0  # a refusal changes nothing


def test_a_folder_without_a_checkpoint_has_nothing_to_resume(tmp_path):
    """A run refused or failed before its first checkpoint: the next run, with any settings, just starts."""
    open_run(tmp_path / "run", "train x", SETTINGS)
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    assert not open_run(tmp_path / "run", "train x", {**SETTINGS, "seed": 3})
    assert json.loads((tmp_path / "run" / "run.json").read_text())["seed"] == 3


def test_overwrite_empties_a_run_folder_but_refuses_a_folder_that_is_not_one(tmp_path):
    run = tmp_path / "run"
    open_run(run, "train x", SETTINGS)
    (run / "stage").mkdir()
    (run / "stage" / "ckpt.eqx").write_bytes(b"weights")
    assert not open_run(run, "train x", {**SETTINGS, "seed": 1}, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["run.json"]
    data = tmp_path / "my_data"
    data.mkdir()
    (data / "screen.h5ad").write_bytes(b"precious")
    with pytest.raises(InputError, match="not a run folder"):
        open_run(data, "train x", SETTINGS, overwrite=True)
    assert (data / "screen.h5ad").read_bytes() == b"precious"


def test_an_unreadable_record_is_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "ckpt.eqx").write_bytes(b"weights")
    (run / "run.json").write_text("{half")
    with pytest.raises(InputError, match="run.json: not readable"):
        open_run(run, "train x", SETTINGS)
