"""Bench plumbing: the results database schema and migrations, the leaderboard as a query, and the task
folder peers read (no held-out cells in it)."""

import sqlite3

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from biojepac import results_db
from biojepac.bench import leaderboard, tasks


def _run(model: str, task: str = "t1", status: str = "ok", note: str = "") -> dict:
    return {"model": model, "model_config": {"k": 1}, "task": task, "split_name": "s", "split_json": {"test": []},
            "dataset_checksum": "abc", "git_commit": "deadbee", "command": "biojepac bench", "host": "h",
            "started_at": None, "status": status, "note": note, "train_s": 1.5, "predict_s": 0.1, "peak_mem_mb": 100.0,
            "pred_fpath": None}


def test_db_records_provenance_and_leaderboard_is_a_query(tmp_path):
    db = tmp_path / "r.sqlite"
    con = results_db.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == results_db.SCHEMA_VERSION
    per = [("ctx", "A", "mae", 0.5), ("ctx", "B", "mae", float("nan"))]
    results_db.add_run(con, _run("old"), per, [("vcc_score", 1.0, 0.0, 2.0)])
    newer = results_db.add_run(con, _run("old"), per, [("vcc_score", 7.0, 5.0, 9.0), ("mae", 0.25, None, None)])
    results_db.add_run(con, _run("STATE", status="skipped", note="STATE venv missing"))
    con.close()

    con = results_db.connect(db)  # reopening must not re-run the migration
    runs = results_db.latest_runs(con)
    assert [(r["model"], r["status"]) for r in runs] == [("STATE", "skipped"), ("old", "ok")]
    assert runs[1]["run_id"] == newer and runs[1]["git_commit"] == "deadbee"
    assert con.execute("SELECT value FROM metrics WHERE run_id=? AND perturbation='B'", (newer,)).fetchone()[0] is None
    paths = leaderboard.write(con, tmp_path)
    text = paths[0].read_text()
    assert "| old | 1/1 | 7.000 |" in text  # the latest run's number, not the first one's
    assert "7.000 [5.000, 9.000]" in text
    assert "skipped: STATE venv missing" in text
    assert paths[1].stat().st_size > 1000
    with pytest.raises(sqlite3.IntegrityError):
        results_db.add_run(con, _run("bad", status="weird"))


def test_task_folder_holds_no_test_cells(tmp_path):
    from biojepac.data.splits import make_unseen_perturbation_split
    from biojepac.features.onehot import make_onehot_provider

    rng = np.random.default_rng(0)
    labels = np.repeat(["non-targeting", "A", "B", "C", "D", "E"], 10)
    obs = pd.DataFrame({"target_gene": labels, "context": "c1", "batch": "0", "pert_type": "CRISPRi"},
                       index=[f"c{i}" for i in range(len(labels))])
    adata = ad.AnnData(X=rng.random((len(labels), 4)).astype(np.float32), obs=obs,
                       var=pd.DataFrame(index=["A", "B", "C", "G"]))
    split = make_unseen_perturbation_split(adata, fractions=(0.6, 0.2, 0.2), seed=0)
    task = tasks.Task("t", adata, split, make_onehot_provider(["A", "B", "C", "D", "E"]), tasks.checksum(adata), True)
    tasks.write_task(task, tmp_path)
    train = ad.read_h5ad(tmp_path / "train.h5ad")
    req = pd.read_csv(tmp_path / "requests.csv")
    test_perts = {p for _, p in split.test}
    assert set(req["target_gene"]) == test_perts and (req["n_cells"] == 10).all()
    assert not test_perts & set(train.obs["target_gene"])
    assert set(train.obs.loc[train.obs["split"] == "val", "target_gene"]) == {p for _, p in split.val}
    assert (train.obs.loc[train.obs["target_gene"] == "non-targeting", "split"] == "control").all()
    # The checksum sees a changed value.
    changed = adata.copy()
    changed.X[0, 0] += 1
    assert tasks.checksum(changed) != task.checksum


def test_norman_combos_holds_out_every_double_and_the_bench_scores_additive_on_it(shared_data_dpath, tmp_path):
    """`norman-combos`: every double of the fixture is test, every single trains; the bench worker runs the
    `additive` baseline (and `linear`) on it, and where both singles were measured the two agree."""
    from biojepac.bench import worker
    from biojepac.data import schema
    from biojepac.data.splits import assert_no_leak

    task = tasks.get_task("norman-combos", shared_data_dpath, cache_dpath=tmp_path)
    labels = set(task.adata.obs[schema.PERT_COL]) - {schema.CONTROL}
    doubles = {lab for lab in labels if schema.COMBO_SEP in lab}
    assert doubles and {p for _, p in task.split.test} == doubles
    assert {p for _, p in task.split.train} == labels - doubles and not task.split.val
    assert_no_leak(task.split)
    seen2 = {p for _, p in task.split.subgroups["combo_seen2"]}
    assert seen2 and all(set(schema.split_combo(p)) <= labels for p in seen2)
    means = {}
    for model in ("additive", "linear"):
        work = tmp_path / model
        spec = {"model": model, "task": task.name, "seed": 0, "data_dpath": str(shared_data_dpath),
                "work_dpath": str(work), "out_fpath": str(work / "pred.h5ad"), "cache_dpath": str(tmp_path)}
        info = worker.run(spec)
        pred = ad.read_h5ad(work / "pred.h5ad")
        assert set(pred.obs[schema.PERT_COL]) == doubles | {schema.CONTROL}
        assert info["n_pred_cells"] == int(task.adata.obs[schema.PERT_COL].isin(doubles).sum())
        means[model] = {p: np.asarray(pred[(pred.obs[schema.PERT_COL] == p).to_numpy()].X.mean(0)).ravel() for p in doubles}
    for p in seen2:  # controls are drawn with the same seed, so the predicted means match
        np.testing.assert_allclose(means["linear"][p], means["additive"][p], atol=1e-5)


def test_cross_dataset_fewshot_is_the_fixture_combined(shared_data_dpath, tmp_path):
    """Norman19 K562 singles + McFaline23 through `data combine`: values unchanged (both at 1e4), contexts
    `dataset:cell_line`, three U87MG perturbations in train and the other six in test."""
    from biojepac.data.recipes import load_norman_mcfaline

    task = tasks.get_task("cross-dataset-fewshot", shared_data_dpath, cache_dpath=tmp_path)
    full = load_norman_mcfaline(shared_data_dpath / "norman19_mcfaline23_devel.h5ad")
    obs = task.adata.obs
    assert set(obs["context"]) == {"norman19:k562", "mcfaline23:A172", "mcfaline23:T98G", "mcfaline23:U87MG"}
    barcodes = [name.split(":", 1)[1] for name in obs.index]
    ref = full[barcodes]
    np.testing.assert_allclose(task.adata.X.toarray(), ref.X.toarray(), rtol=1e-6)  # float64 in, float32 out
    assert list(task.adata.var_names) == list(full.var_names) and task.adata.var["measured:norman19"].all()
    u87 = [it for it in task.split.train if it[0] == "mcfaline23:U87MG"]
    assert len(u87) == 3 and len(task.split.test) == 6 and all(c == "mcfaline23:U87MG" for c, _ in task.split.test)
    assert {c for c, _ in task.split.train} == set(obs["context"])
    assert not set(map(tuple, task.split.test)) & set(map(tuple, task.split.train))
